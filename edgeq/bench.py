"""``edgeq bench quality``: every method and its peers compiled to ``.onnx`` and scored in ONNX Runtime, in one run.

Each config gets a folder under the output with ``result.json``; a rerun skips configs whose result exists and
resumes an interrupted quantization from its per-layer checkpoints. Average bits per weight are read off the
final graph: the bytes of every initializer a quantized linear reads (codes, scales, zero points, outliers,
indices, permutations) over its K·N weights — the same count for edgeq's methods and the peers.

Config specs: ``fp32``, ``METHOD:key=value,...`` with METHOD one of edgeq's (rtn, gptq, spqr, omniquant; keys are
the config's fields, e.g. ``gptq:bits=3,group_size=128``), or a peer from onnxruntime's
``matmul_nbits_quantizer`` run on the FP32 ``.onnx``: ``ort-rtn:bits=4,block_size=128``, ``ort-hqq:bits=4,block_size=64``,
``ort-gptq:bits=4,block_size=128,nsamples=128,seqlen=512`` (on our calibration plays), ``ort-kquant``. A
weight-activation config (rtn/omniquant with abits < 16, illm) with ``integer_only=1`` is scored as the
integer-only graph (``edgeq export --integer-only``), e.g. ``illm:wbits=8,abits=8,integer_only=1``, and
``rotate_down=B`` adds ``--rotate-down B`` to it (export options, not the quantizer's: the same checkpoints serve).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx

from edgeq.errors import EdgeqError
from edgeq.quantize.config import METHODS, config_from_spec, parse_spec_args

INTEGER_ONLY = "integer_only"  # spec key: =1 builds the I-LLM integer-only graph (weight-activation configs)
ROTATE_DOWN = "rotate_down"    # spec key: that graph's Hadamard block on down_proj's input (edgeq export --rotate-down)
PEERS = ("ort-rtn", "ort-hqq", "ort-gptq", "ort-kquant")
SPIN_GAP_S = 0.1  # pause between timed models (measure_speed), longer than ORT's idle workers spin
# op type -> index of its activation input (every other initializer input is weight storage)
LINEAR_OPS = {"MatMulNBits": 0, "GroupQuantMatMul": 0, "SpQRMatMul": 0, "QuantLinear": 0, "MatMul": 0,
              "DIMatMul": 0}  # DIMatMul: (X, x_m, x_e) computed; W and its dyadic scales w_m, w_e stored


def check_peer_blocks(model: onnx.ModelProto, method: str, block: int) -> None:
    """onnxruntime's GPTQ and k-quant reshape each weight into whole blocks along K (RTN and HQQ pad): refuse a
    block size that does not divide every MatMul weight's K before any work, naming the ones that would fail."""
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    bad = sorted({dims[0] for node in model.graph.node if node.op_type == "MatMul"
                  for dims in [weights.get(node.input[1])] if dims and len(dims) == 2 and dims[0] % block})
    if bad:
        raise EdgeqError(f"{method}: block_size={block} must divide every MatMul's K (onnxruntime's {method[4:]} does "
                         f"not pad); these K do not: {bad}, e.g. use block_size=32")


@dataclasses.dataclass
class Result:
    config: str
    perplexity: float
    avg_bits: float
    linear_params: int
    onnx_mb: float
    quant_seconds: float
    eval_seconds: float
    tokens_scored: int


def parse_spec(spec: str) -> tuple[str, dict]:
    method, _, rest = spec.partition(":")
    return method, parse_spec_args(spec, rest)


def split_export_options(spec: str) -> tuple[str, bool, int]:
    """(the spec without its export keys, whether it asked for the integer-only graph, its ``rotate_down`` block)."""
    method, _, rest = spec.partition(":")
    items = [item for item in rest.split(",") if item]
    keys = (INTEGER_ONLY, ROTATE_DOWN)
    keep = [item for item in items if item.partition("=")[0].strip() not in keys]
    value = {item.partition("=")[0].strip(): item.partition("=")[2].strip() for item in items
             if item.partition("=")[0].strip() in keys}
    integer_only = value.get(INTEGER_ONLY, "0").lower() not in ("0", "false")
    try:
        rotate_down = int(value.get(ROTATE_DOWN, "0"))
    except ValueError:
        raise EdgeqError(f"{spec}: {ROTATE_DOWN} must be an integer") from None
    if rotate_down and not integer_only:
        raise EdgeqError(f"{spec}: {ROTATE_DOWN} is an option of the integer-only graph ({INTEGER_ONLY}=1)")
    return method + (":" + ",".join(keep) if keep else ""), integer_only, rotate_down


def slug(spec: str) -> str:
    return spec.replace(":", "-").replace(",", "-").replace("=", "")


def linear_storage(model: onnx.ModelProto) -> tuple[int, int]:
    """(bits, weights) of the decoder linears: initializer bytes each lowered linear reads, over its K·N."""
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    bits = params = 0
    for node in model.graph.node:
        if node.op_type not in LINEAR_OPS or node.op_type == "MatMul" and node.input[1] not in inits:
            continue  # a MatMul reading a computed B (attention, tied lm_head) is not a stored linear
        if node.name.startswith("lm_head"):  # not a decoder linear (the integer graph's is a DIMatMul)
            continue
        weight = [inits[name] for i, name in enumerate(node.input) if i != LINEAR_OPS[node.op_type] and name in inits]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "MatMul":
            k, n = weight[0].dims
        else:
            k, n = attrs["K"], attrs["N"]
        source = producers.get(node.input[0])
        if source is not None and source.op_type == "Gather" and source.input[1] in inits:
            weight.append(inits[source.input[1]])  # the act-order permutation belongs to the weight
        bits += sum(_tensor_bytes(t) for t in weight) * 8
        params += k * n
    return bits, params


def _tensor_bytes(t: onnx.TensorProto) -> int:
    """Stored bytes of an initializer, from its shape and type: needs no weights loaded (external data stays on disk)."""
    n = math.prod(t.dims)
    if t.data_type in (onnx.TensorProto.UINT4, onnx.TensorProto.INT4):
        return (n + 1) // 2
    return n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def machine() -> dict:
    import onnxruntime
    import torch
    import transformers

    def commit():
        stamped = Path(__file__).resolve().parent / "COMMIT"  # written by scripts/snapshot.sh into the install
        if stamped.is_file():
            return stamped.read_text().strip()
        try:
            return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                  cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    return {"machine": f"{platform.machine()} {os.cpu_count()} cores", "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "commit": os.environ.get("EDGEQ_COMMIT") or commit()}


class QualityBench:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.output)
        self.out.mkdir(parents=True, exist_ok=True)
        self._lm = None
        self._fp_state = None
        self._tokens = None

    # the model is loaded once and restored to FP before each config
    @property
    def lm(self):
        if self._lm is None:
            import copy

            from edgeq.models import load_model

            self._lm = load_model(self.args.model)
            self._fp_state = copy.deepcopy(self._lm.model)
        return self._lm

    def fresh_model(self):
        import copy

        lm = self.lm
        lm.model = copy.deepcopy(self._fp_state)
        return lm

    @property
    def tokens(self):
        if self._tokens is None:
            from edgeq.cli import eval_tokens

            self._tokens = eval_tokens(self.lm.tokenizer, self.args)
        return self._tokens

    def fp32_onnx(self) -> Path:
        from edgeq.exporter.export import export

        path = self.out / "fp32" / "model.onnx"
        if not path.exists():
            lm = self.fresh_model()
            export(lm.model, lm.tokenizer, path)
        return path

    def build(self, spec: str, folder: Path) -> tuple[Path, float]:
        from edgeq.cli import run_export
        from edgeq.quantize.api import quantize_, save_quantized
        from edgeq.quantize.config import config_to_dict
        from edgeq.quantize.sequential import LayerCheckpoints
        from edgeq.text import calibration_batch

        method, kwargs = parse_spec(spec)
        if method == "fp32":
            return self.fp32_onnx(), 0.0
        if method in PEERS:
            return self.build_peer(method, kwargs, folder)
        if method not in METHODS:
            raise EdgeqError(f"unknown config '{method}' (edgeq: {', '.join(METHODS)}; peers: {', '.join(PEERS)})")
        spec, integer_only, rotate_down = split_export_options(spec)
        config = config_from_spec(spec)
        lm = self.fresh_model()
        calib = None
        if hasattr(config, "nsamples"):
            calib = calibration_batch(lm.tokenizer, self.args.calib, config.nsamples, config.seqlen, config.seed)
        # a rerun resumes from the per-layer checkpoints in seconds: report the time the layers took when they
        # were quantized (each checkpoint records its own), or the first run's total
        timing = folder / "quant_seconds.json"
        start = time.perf_counter()
        qweights = quantize_(lm.model, config, calib, checkpoint_dir=folder / "checkpoints", device=self.args.calib_device)
        seconds = time.perf_counter() - start
        recorded = LayerCheckpoints(folder / "checkpoints", config_to_dict(config)).seconds()
        if recorded is not None:
            seconds = recorded
        elif timing.exists():
            seconds += json.loads(timing.read_text())["seconds"]
        timing.write_text(json.dumps({"seconds": seconds}))
        save_quantized(folder / "quantized", qweights, config, lm.source)
        return run_export(lm.model, lm.tokenizer, folder / "model.onnx", "float32", lower=True, integer_only=integer_only,
                          rotate_down=rotate_down), seconds

    def build_peer(self, method: str, kwargs: dict, folder: Path) -> tuple[Path, float]:
        from onnxruntime.quantization import matmul_nbits_quantizer as mnq

        fp = onnx.load(str(self.fp32_onnx()))
        bits, block = kwargs.get("bits", 4), kwargs.get("block_size", 128)
        if method in ("ort-gptq", "ort-kquant"):
            check_peer_blocks(fp, method, block)
        if method == "ort-rtn":
            algo = mnq.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=kwargs.get("sym", False), bits=bits)
        elif method == "ort-hqq":
            algo = mnq.HQQWeightOnlyQuantConfig(block_size=block, bits=bits)
        elif method == "ort-gptq":
            algo = mnq.GPTQWeightOnlyQuantConfig(
                calibration_data_reader=self.calibration_reader(kwargs.get("nsamples", 128), kwargs.get("seqlen", 512)),
                block_size=block, actorder=kwargs.get("actorder", True))
        else:
            algo = mnq.KQuantWeightOnlyQuantConfig()
        start = time.perf_counter()
        quantizer = mnq.MatMulNBitsQuantizer(fp, bits=bits, block_size=block, algo_config=algo)
        quantizer.process()
        seconds = time.perf_counter() - start
        from edgeq.exporter.save import save_model

        path = save_model(quantizer.model.model, folder / "model.onnx")
        self.lm.tokenizer.save_pretrained(folder)
        return path, seconds

    def calibration_reader(self, nsamples: int, seqlen: int):
        """Our calibration sequences as feeds for the FP32 decoder (empty KV cache), for ORT's own GPTQ."""
        from onnxruntime.quantization import CalibrationDataReader

        from edgeq.text import calibration_batch

        cfg = self.lm.model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        batch = calibration_batch(self.lm.tokenizer, self.args.calib, nsamples, seqlen)

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.rows = iter(batch)

            def get_next(self):
                row = next(self.rows, None)
                if row is None:
                    return None
                feeds = {"input_ids": row[None], "attention_mask": np.ones((1, seqlen), np.int64),
                         "position_ids": np.arange(seqlen, dtype=np.int64)[None]}
                for i in range(cfg.num_hidden_layers):
                    for kind in ("key", "value"):
                        feeds[f"past_key_values.{i}.{kind}"] = np.zeros((1, cfg.num_key_value_heads, 0, head_dim), np.float32)
                return feeds

        return Reader()

    def run_one(self, spec: str) -> Result:
        from edgeq.cli import eval_onnx

        folder = self.out / slug(spec)
        done = folder / "result.json"
        if done.exists():
            return Result(**json.loads(done.read_text()))
        folder.mkdir(parents=True, exist_ok=True)
        path, quant_seconds = self.build(spec, folder)
        start = time.perf_counter()
        ppl = eval_onnx(path, self.tokens, self.args, spec)
        eval_seconds = time.perf_counter() - start
        bits, params = linear_storage(onnx.load(str(path), load_external_data=False))
        size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
        result = Result(spec, ppl.perplexity, bits / params if params else float("nan"), params, size / 2**20,
                        quant_seconds, eval_seconds, ppl.tokens_scored)
        done.write_text(json.dumps(dataclasses.asdict(result), indent=2))
        return result

    def run(self, specs: list[str]) -> list[Result]:
        from tqdm.auto import tqdm

        results = []
        for spec in tqdm(specs, desc="configs", unit="config"):
            try:
                results.append(self.run_one(spec))
            except Exception as e:  # one broken config (a peer's own bug, say) must not lose the others
                print(f"config {spec} failed, skipped (rerun retries it): {type(e).__name__}: {e}")
                continue
            print(self.table(results))
        meta = {**machine(), "model": self.args.model, "text": self.args.text, "window": self.args.window,
                "stride": self.args.stride, "max_windows": self.args.max_windows,
                "results": [dataclasses.asdict(r) for r in results]}
        (self.out / "quality.json").write_text(json.dumps(meta, indent=2))
        (self.out / "quality.md").write_text(self.table(results) + "\n")
        plot_quality(results, self.out / "quality.png")
        return results

    @staticmethod
    def table(results: list[Result]) -> str:
        fp = next((r.perplexity for r in results if r.config == "fp32"), None)
        lines = ["| config | avg bits | PPL (ORT) | vs FP32 | .onnx MB | quant s | eval s |", "|---|---|---|---|---|---|---|"]
        for r in results:
            rel = f"{(r.perplexity / fp - 1) * 100:+.2f}%" if fp else "n/a"
            lines.append(f"| {r.config} | {r.avg_bits:.3f} | {r.perplexity:.3f} | {rel} | {r.onnx_mb:.0f} | "
                         f"{r.quant_seconds:.0f} | {r.eval_seconds:.0f} |")
        return "\n".join(lines)


def family(spec: str) -> str:
    """One plotted line per method, weight-only and weight-activation configs apart (different frontiers)."""
    method, kwargs = parse_spec(spec)
    return f"{method} (weight-activation)" if kwargs.get("abits", 16) < 16 else method


def plot_quality(results: list[Result], path: Path) -> None:
    """Perplexity against average bits, one line per method (its Pareto frontier), FP32 as a reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_family: dict[str, list[Result]] = {}
    for r in results:
        if r.config == "fp32":
            ax.axhline(r.perplexity, color="black", linestyle="--", linewidth=1, label=f"FP32 ({r.perplexity:.2f})")
        else:
            by_family.setdefault(family(r.config), []).append(r)
    for name, rows in sorted(by_family.items()):
        rows = sorted(rows, key=lambda r: r.avg_bits)
        frontier, best = [], np.inf
        for r in rows:
            if r.perplexity < best:
                frontier.append(r)
                best = r.perplexity
        ax.plot([r.avg_bits for r in rows], [r.perplexity for r in rows], "o", alpha=0.35)
        ax.plot([r.avg_bits for r in frontier], [r.perplexity for r in frontier], "-o", label=name, color=ax.lines[-1].get_color())
    ax.set_xlabel("average bits per weight (stored bytes of the decoder linears)")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("edgeq methods and peers, ONNX Runtime")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@dataclasses.dataclass
class Speed:
    model: str
    prefill_tokens_per_second: float
    decode_tokens_per_second: float
    device: str
    threads: int | None
    # Decode tokens/s over the first model's in the same round, median and quartiles over the rounds: on a shared
    # machine whose speed drifts between rounds, the ratio of neighbours is steadier than the ratio of medians.
    decode_vs_first: tuple[float, float, float] | None = None


def measure_speed(paths: list[Path], args) -> list[Speed]:
    """Prefill and decode tokens/s per model, rounds interleaved across models so drift hits all alike; medians."""
    from edgeq.runtime.decoder import OnnxDecoder
    from edgeq.runtime.generate import SamplingConfig, generate

    decoders = [OnnxDecoder(p, args.device, args.threads) for p in paths]
    vocab = min(d.session.get_outputs()[0].shape[-1] for d in decoders)
    prompt = np.random.default_rng(0).integers(1, vocab, args.prompt_tokens).tolist()
    cfg = SamplingConfig(max_new_tokens=args.new_tokens, stop_at_eos=False)
    prefill = [[] for _ in paths]
    decode = [[] for _ in paths]
    for d in decoders:  # warm-up: first runs allocate and pick kernels
        generate(d, prompt[:8], SamplingConfig(max_new_tokens=2, stop_at_eos=False))
    for _ in range(args.rounds):
        for i, d in enumerate(decoders):
            # ORT's idle workers spin for tens of ms after a session's last parallel loop: let the previous model's
            # stop before this one's prefill, or they take a core from it (BENCHMARKS.md, stop 25)
            time.sleep(SPIN_GAP_S)
            out = generate(d, prompt, cfg)
            prefill[i].append(out.prefill_tokens_per_second)
            decode[i].append(out.decode_tokens_per_second)
    first = np.asarray(decode[0])
    return [Speed(str(p), float(np.median(a)), float(np.median(b)), args.device, args.threads,
                  tuple(float(q) for q in np.percentile(np.asarray(b) / first, [50, 25, 75])))
            for p, a, b in zip(paths, prefill, decode)]


def speed_table(rows: list[Speed], names: list[str]) -> str:
    lines = [f"| model | prefill tok/s | decode tok/s | decode vs {names[0]} (per-round median, quartiles) |",
             "|---|---|---|---|"]
    for n, r in zip(names, rows):
        ratio = "" if r.decode_vs_first is None else "{:.2f}x ({:.2f}-{:.2f})".format(*r.decode_vs_first)
        lines.append(f"| {n} | {r.prefill_tokens_per_second:.1f} | {r.decode_tokens_per_second:.1f} | {ratio} |")
    return "\n".join(lines)


def plot_speed(rows: list[Speed], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [r.decode_tokens_per_second for r in rows]
    fig, ax = plt.subplots(figsize=(5 + 0.07 * max(map(len, names)), 0.35 * len(rows) + 1.5))
    bars = ax.barh(names, values, color=["tab:gray" if n == "fp32" else "tab:blue" for n in names])
    ax.bar_label(bars, fmt="%.1f", padding=2, fontsize=8)
    ax.set_xlabel(f"decode tokens/s ({rows[0].device}, threads={rows[0].threads or 'default'})")
    ax.set_xlim(0, max(values) * 1.15)
    ax.invert_yaxis()
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def cmd_bench_speed(args) -> None:
    from edgeq.op_profile import write_profiles
    from edgeq.runtime.session import check_model_file

    out = Path(args.output)
    if args.onnx:
        paths = [Path(p) for p in args.onnx]
        names = [p.parent.name or p.name for p in paths]
    else:
        paths = sorted(out.glob("*/model.onnx"))
        names = [p.parent.name for p in paths]
    if not paths:
        raise EdgeqError(f"no models to time: give --onnx files or run 'edgeq bench quality -o {out}' first")
    for p in paths:
        check_model_file(p)
    rows = measure_speed(paths, args)
    table = speed_table(rows, names)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.md").write_text(table + "\n")
    (out / "speed.json").write_text(json.dumps({**machine(), "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
                                                "rounds": args.rounds, "results": [dataclasses.asdict(r) for r in rows]}, indent=2))
    plot_speed(rows, names, out / "speed.png")
    write_profiles(paths, names, args, out)


def cmd_bench_quality(args) -> None:
    from edgeq.text import read_text

    read_text(args.text)  # refuse a bad text before any work
    results = QualityBench(args).run(args.configs)
    print(f"\nwritten: {Path(args.output) / 'quality.md'}, quality.json, quality.png ({len(results)} configs)")


def add_timing_args(p) -> None:
    """The generation-timing options ``measure_speed`` reads, shared by ``bench speed`` and ``bench synthetic``."""
    from edgeq.cli import add_device_args

    p.add_argument("--prompt-tokens", type=int, default=128, help="prompt length for prefill (default: 128)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens decoded per round (default: 64)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per model (default: 5)")
    p.add_argument("--profile-steps", type=int, default=0,
                   help="then profile this many decode steps per model with ORT's profiler: kernel time per op type "
                        "(op-profile.md; default: 0, off)")
    add_device_args(p)


def register(sub) -> None:
    from edgeq.cli import CALIB_TEXT, DEFAULT_MODEL, add_device_args, add_eval_args

    bench = sub.add_parser("bench", help="benchmark tables: quality and speed of every method and peer",
                           description="Benchmarks that print tables and write JSON and plots.")
    bsub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    p = bsub.add_parser("quality", help="perplexity and average bits of each config's .onnx in ORT",
                        description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model alias, .gguf or HF folder (default: {DEFAULT_MODEL})")
    p.add_argument("--configs", nargs="+", required=True, help="config specs (see above)")
    p.add_argument("-o", "--output", default="out/bench", help="results folder; finished configs are reused (default: out/bench)")
    p.add_argument("--calib", default=CALIB_TEXT, help=f"calibration text (default: {CALIB_TEXT})")
    p.add_argument("--calib-device", default=None, choices=["cpu", "cuda"], help="where calibration runs (default: cuda if torch sees one)")
    add_eval_args(p)
    add_device_args(p)
    p.set_defaults(func=cmd_bench_quality)

    p = bsub.add_parser("speed", help="prefill and decode tokens/s of .onnx models",
                        description="Time greedy generation of each model (rounds interleaved, medians); "
                                    "by default every OUTPUT/*/model.onnx a quality run left.")
    p.add_argument("--onnx", nargs="*", default=None, help="models to time (default: OUTPUT/*/model.onnx)")
    p.add_argument("-o", "--output", default="out/bench", help="folder with the models; speed.md/json/png go here (default: out/bench)")
    add_timing_args(p)
    p.set_defaults(func=cmd_bench_speed)

    from edgeq.synthetic import register as register_synthetic

    register_synthetic(bsub)

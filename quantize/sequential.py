"""Layer-by-layer calibration: the loop GPTQ, SpQR and OmniQuant share.

The calibration batch is run once up to the first decoder layer; then each layer in turn collects its
statistics, is quantized, and its *quantized* outputs become the next layer's inputs. Each finished layer is
checkpointed, so an interrupted run resumes at the first unfinished layer.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from edgeq.errors import EdgeqError
from edgeq.quantize.formats import FORMATS
from edgeq.quantize.modules import apply_to_layer, decoder_linears

log = logging.getLogger(__name__)

# (layer, calibration inputs of every linear by name) -> quantized weights by linear name
LayerQuantizer = Callable[[torch.nn.Module, "LayerRunner"], dict]


class _StopForward(Exception):
    pass


class LayerRunner:
    """Runs one decoder layer over the cached calibration activations, in mini-batches.

    inputs: the current (quantized-model) activations per mini-batch; layer_kwargs: what the model hands each
    layer for that mini-batch (rotary tables, mask). With ``track_fp`` the driver also keeps the FP model's
    activations (fp_inputs) and the FP layer's outputs on them (targets), for methods that fit to the FP model.
    """

    def __init__(self, inputs: list[torch.Tensor], layer_kwargs: list[dict]):
        self.inputs = inputs
        self.layer_kwargs = layer_kwargs
        self.fp_inputs: list[torch.Tensor] | None = None
        self.targets: list[torch.Tensor] | None = None

    @torch.no_grad()
    def run(self, layer: torch.nn.Module, inputs: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        outs = []
        for x, kwargs in zip(self.inputs if inputs is None else inputs, self.layer_kwargs):
            out = layer(x, **kwargs)
            outs.append(out[0] if isinstance(out, tuple) else out)
        return outs


@torch.no_grad()
def capture_first_layer_inputs(model, calib_ids: torch.Tensor, batch_size: int) -> LayerRunner:
    layers = model.model.layers
    inputs: list[torch.Tensor] = []
    layer_kwargs: list[dict] = []

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        inputs.append(hidden.detach())
        skip = ("hidden_states", "past_key_values", "past_key_value", "use_cache")
        layer_kwargs.append({k: v for k, v in kwargs.items() if k not in skip} | {"use_cache": False})
        raise _StopForward

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for start in range(0, len(calib_ids), batch_size):
            try:
                model(calib_ids[start : start + batch_size], use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return LayerRunner(inputs, layer_kwargs)


def collect_inputs(layer: torch.nn.Module, runner: LayerRunner, sink: Callable[[str, torch.Tensor], None]) -> dict[str, str]:
    """Run the layer once, handing each distinct linear input to ``sink(name, x)``.

    q/k/v (and gate/up) read the very same tensor; it is handed over once, under the first linear's name.
    Returns {linear name: name its input was handed over under} so callers can share the statistics.
    """
    owner: dict[str, str] = {}
    last: list = [None, None]

    def hook(module, inp, out, name):
        x = inp[0]
        if name not in owner:
            owner[name] = owner[last[1]] if x is last[0] else name
        last[:] = [x, name]
        if owner[name] == name:
            sink(name, x)

    handles = [
        module.register_forward_hook(lambda m, inp, out, name=name: hook(m, inp, out, name))
        for name, module in decoder_linears(layer).items()
    ]
    try:
        runner.run(layer)
    finally:
        for h in handles:
            h.remove()
    return owner


def to_device(obj, device):
    """``obj`` with every tensor in it (nested in lists, tuples, dicts) on ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def weight_to_cpu(qw):
    """A packed weight (a dataclass of tensors and ints) with its tensors on the CPU, where formats are saved."""
    return dataclasses.replace(qw, **{f.name: getattr(qw, f.name).cpu() for f in dataclasses.fields(qw)
                                      if isinstance(getattr(qw, f.name), torch.Tensor)})


def pick_device(device: str | None) -> torch.device:
    """The device calibration runs on: as asked, else CUDA when there is one."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EdgeqError("calibration device 'cuda' asked for, but torch sees no CUDA device")
    return device


def load_file_metadata(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


class LayerCheckpoints:
    """One safetensors file per finished layer, under a folder tagged with the method config."""

    def __init__(self, folder: Path | None, config_dict: dict):
        self.folder = folder
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        tag = folder / "config.json"
        if tag.exists() and json.loads(tag.read_text()) != config_dict:
            raise EdgeqError(f"checkpoint folder {folder} holds a run with another config; remove it or pick another")
        tag.write_text(json.dumps(config_dict, sort_keys=True))

    def _path(self, index: int) -> Path:
        return self.folder / f"layer_{index:03d}.safetensors"

    def load(self, index: int) -> dict | None:
        """Everything the method wrote for layer ``index`` (packed linears, rewritten FP tensors), or None."""
        if self.folder is None or not self._path(index).exists():
            return None
        tensors = load_file(self._path(index))
        formats = json.loads(load_file_metadata(self._path(index))["formats"])
        return {name: FORMATS[fmt].from_tensors(tensors, name) for name, fmt in formats.items()}

    def complete(self, layers: int) -> bool:
        """Whether every one of ``layers`` layers has a checkpoint."""
        return self.folder is not None and all(self._path(i).exists() for i in range(layers))

    def seconds(self) -> float | None:
        """Quantization time summed over the checkpointed layers (each records its own), None if any lacks it."""
        if self.folder is None:
            return None
        paths = sorted(self.folder.glob("layer_*.safetensors"))
        times = [load_file_metadata(p).get("seconds") for p in paths]
        return sum(float(t) for t in times) if paths and None not in times else None

    def save(self, index: int, qweights: dict, seconds: float | None = None) -> None:
        if self.folder is None:
            return
        tensors = {}
        for name, qw in qweights.items():
            tensors.update(qw.to_tensors(name))
        formats = json.dumps({name: qw.FORMAT for name, qw in qweights.items()})
        tmp = self._path(index).with_suffix(".tmp")
        metadata = {"formats": formats} | ({"seconds": f"{seconds:.3f}"} if seconds is not None else {})
        save_file(tensors, tmp, metadata=metadata)
        tmp.replace(self._path(index))


def quantize_sequential(
    model,
    calib_ids: torch.Tensor,
    quantize_layer: LayerQuantizer,
    checkpoints: LayerCheckpoints,
    batch_size: int = 8,
    desc: str = "quantize",
    track_fp: bool = False,
    device: str | torch.device | None = None,
) -> dict:
    """Quantize every decoder layer in order; returns the weights by full module name and swaps them in.

    Runs on ``device`` (default: CUDA when available) one layer at a time: the model stays on the CPU and only
    the layer being calibrated and the calibration activations move, so device memory holds one block plus
    activations. Packed weights come back to the CPU.
    """
    device = pick_device(device)
    layers = model.model.layers
    if checkpoints.complete(len(layers)):  # a finished run (e.g. calibrated elsewhere): no calibration forward
        result = {name: qw for index in range(len(layers)) for name, qw in checkpoints.load(index).items()}
        apply_to_layer(model, result)  # full names, from the model's root
        return result
    runner = capture_first_layer_inputs(model, calib_ids, batch_size)
    runner.inputs = to_device(runner.inputs, device)
    runner.layer_kwargs = to_device(runner.layer_kwargs, device)
    if track_fp:
        runner.fp_inputs = list(runner.inputs)
    result: dict = {}
    for index, layer in enumerate(tqdm(layers, desc=desc, unit="layer")):
        prefix = f"model.layers.{index}."
        layer.to(device)
        if track_fp:  # the FP layer's outputs, before quantization rewrites it
            runner.targets = runner.run(layer, runner.fp_inputs)
        qweights = checkpoints.load(index)
        if qweights is None:
            start = time.perf_counter()
            found = quantize_layer(layer, runner)
            qweights = {prefix + n: weight_to_cpu(qw) for n, qw in found.items()}
            checkpoints.save(index, qweights, time.perf_counter() - start)
        else:
            log.info("layer %d: resumed from checkpoint", index)
        apply_to_layer(layer, {name.removeprefix(prefix): qw for name, qw in qweights.items()})
        layer.to(device)  # the new QuantizedLinear buffers are built on the CPU
        result.update(qweights)
        runner.inputs = runner.run(layer)
        layer.to("cpu")
        if track_fp:
            runner.fp_inputs, runner.targets = runner.targets, None
    return result

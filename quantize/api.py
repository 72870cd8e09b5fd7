"""``quantize_(model, config, ...)``: the one entry point; dispatches on the config type through a registry.

A quantized model is saved as a folder: ``edgeq_quant.json`` (format version, method config, source model) and
``weights.safetensors`` (each quantized linear's format tensors under its module name).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from edgeq.errors import EdgeqError
from edgeq.quantize.config import GPTQConfig, ILLMConfig, OmniQuantConfig, RTNConfig, SpQRConfig, config_from_dict, config_to_dict
from edgeq.quantize.formats import FORMATS
from edgeq.quantize.gptq import GPTQ
from edgeq.quantize.illm import fsbr_block
from edgeq.quantize.modules import QuantizedLinear, apply_to_layer, decoder_linears, set_submodule
from edgeq.quantize.omniquant import train_block
from edgeq.quantize.rtn import rtn_quantize
from edgeq.quantize.spqr import SpQR
from edgeq.quantize.sequential import LayerCheckpoints, collect_inputs, quantize_sequential

FORMAT_VERSION = 2  # 2: SpQR stat codes packed as one bitstream per row
META_FILE, WEIGHTS_FILE = "edgeq_quant.json", "weights.safetensors"

_REGISTRY: dict[type, Callable] = {}


def register(config_type: type):
    def wrap(fn):
        _REGISTRY[config_type] = fn
        return fn

    return wrap


def quantize_(model, config, calib_ids: torch.Tensor | None = None, checkpoint_dir: str | Path | None = None,
              device: str | None = None):
    """Quantize every decoder linear of ``model`` in place; returns {module name: packed weight}.

    device: where calibration runs (``cuda``, ``cpu``); default CUDA when torch sees one. The model stays on
    the CPU; one layer at a time moves.
    """
    fn = _REGISTRY.get(type(config))
    if fn is None:
        raise EdgeqError(f"no quantizer registered for {type(config).__name__}")
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    return fn(model, config, calib_ids, LayerCheckpoints(folder, config_to_dict(config)), device)


@register(RTNConfig)
@torch.no_grad()
def _quantize_rtn(model, config: RTNConfig, calib_ids, checkpoints, device):
    result = {}
    for index, layer in enumerate(model.model.layers):
        for name, module in decoder_linears(layer).items():
            qw = rtn_quantize(module.weight, config)
            set_submodule(layer, name, QuantizedLinear(qw, module.bias))
            result[f"model.layers.{index}.{name}"] = qw
    return result


def _hessian_solvers(layer, runner, solver_type):
    """One solver per linear of ``layer``, with the Hessian of its calibration inputs collected."""
    solvers = {name: solver_type(m.weight) for name, m in decoder_linears(layer).items()}
    owner = collect_inputs(layer, runner, lambda name, x: solvers[name].add_batch(x))
    for name, source in owner.items():
        solvers[name].share_statistics(solvers[source])
    return solvers


@register(GPTQConfig)
def _quantize_gptq(model, config: GPTQConfig, calib_ids, checkpoints, device):
    if calib_ids is None:
        raise EdgeqError("GPTQ needs calibration data")

    def quantize_layer(layer, runner):
        out = {}
        for name, solver in _hessian_solvers(layer, runner, GPTQ).items():
            out[name] = solver.quantize(
                config.bits, config.group_size, config.sym, config.act_order, config.damp, config.block_size
            )
            solver.free()
        return out

    return quantize_sequential(model, torch.as_tensor(calib_ids), quantize_layer, checkpoints, desc="gptq", device=device)


# Each retry raises τ by this factor until the layer's outlier share is at most target_outliers.
TAU_STEP, TAU_TRIES = 1.5, 12


@register(SpQRConfig)
def _quantize_spqr(model, config: SpQRConfig, calib_ids, checkpoints, device):
    if calib_ids is None:
        raise EdgeqError("SpQR needs calibration data")

    def quantize_layer(layer, runner):
        out = {}
        for name, solver in _hessian_solvers(layer, runner, SpQR).items():
            tau = config.outlier_threshold
            for _ in range(TAU_TRIES):
                qw = solver.quantize(config.bits, config.group_size, config.stat_bits, config.stat_group_size, tau,
                                     config.act_order, config.damp, config.block_size)
                if config.target_outliers is None or qw.outlier_fraction <= config.target_outliers:
                    break
                tau *= TAU_STEP
            out[name] = qw
            solver.free()
        return out

    return quantize_sequential(model, torch.as_tensor(calib_ids), quantize_layer, checkpoints, desc="spqr", device=device)


@register(OmniQuantConfig)
@register(ILLMConfig)
def _quantize_omniquant(model, config: OmniQuantConfig, calib_ids, checkpoints, device):
    """OmniQuant, or I-LLM's FSBR (the same block trainer with ``FSBRBlock``)."""
    illm = isinstance(config, ILLMConfig)
    name = "I-LLM" if illm else "OmniQuant"
    if calib_ids is None:
        raise EdgeqError(f"{name} needs calibration data")
    train = fsbr_block if illm else train_block
    return quantize_sequential(model, torch.as_tensor(calib_ids), lambda layer, runner: train(layer, runner, config),
                               checkpoints, batch_size=config.batch_size, desc=name.lower().replace("-", ""),
                               track_fp=True, device=device)


def save_quantized(folder: str | Path, qweights: dict, config, source: str) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, qw in qweights.items():
        tensors.update(qw.to_tensors(name))
    save_file(tensors, folder / WEIGHTS_FILE)
    meta = {"format_version": FORMAT_VERSION, "config": config_to_dict(config), "source": source,
            "linears": {name: qw.FORMAT for name, qw in sorted(qweights.items())}}
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))


def load_quantized(folder: str | Path):
    """Returns (config, source model name, {module name: packed weight}); refuses a damaged folder up front."""
    folder = Path(folder)
    meta_path = folder / META_FILE
    if not meta_path.exists():
        raise EdgeqError(f"{folder}: not an edgeq quantized model (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise EdgeqError(f"{meta_path}: not valid JSON ({e})") from e
    if meta.get("format_version") != FORMAT_VERSION:
        raise EdgeqError(f"{meta_path}: format version {meta.get('format_version')}, this edgeq reads {FORMAT_VERSION}")
    try:
        tensors = load_file(folder / WEIGHTS_FILE)
    except Exception as e:
        raise EdgeqError(f"{folder / WEIGHTS_FILE}: cannot read ({e})") from e
    try:
        qweights = {name: FORMATS[fmt].from_tensors(tensors, name) for name, fmt in meta["linears"].items()}
    except (KeyError, AttributeError) as e:
        raise EdgeqError(f"{meta_path}: unknown or missing weight format ({e})") from e
    return config_from_dict(meta["config"]), meta["source"], qweights


def apply_quantized(model, qweights: dict) -> None:
    """Swap the named linears of ``model`` for ``QuantizedLinear`` modules and copy in rewritten FP tensors."""
    apply_to_layer(model, qweights)

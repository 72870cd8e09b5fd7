"""The edgeq Python API in one page: quantize a model with GPTQ, export it, lower it, and generate with ORT.

    python samples/quantize_export_run.py [--model smollm2-135m] [--out out/sample]
"""

import argparse
from pathlib import Path

from edgeq.cli import lowering_passes
from edgeq.exporter.export import export
from edgeq.models import load_model
from edgeq.quantize.api import quantize_, save_quantized
from edgeq.quantize.config import GPTQConfig
from edgeq.runtime.decoder import OnnxDecoder
from edgeq.runtime.generate import SamplingConfig, generate
from edgeq.text import calibration_batch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", default="out/sample")
    args = parser.parse_args()
    out = Path(args.out)

    lm = load_model(args.model)
    config = GPTQConfig(bits=4, group_size=128, nsamples=32, seqlen=512)
    calib = calibration_batch(lm.tokenizer, "shakespeare-calib", config.nsamples, config.seqlen, config.seed)
    qweights = quantize_(lm.model, config, calib, checkpoint_dir=out / "checkpoints")
    save_quantized(out / "quantized", qweights, config, lm.source)

    path = export(lm.model, lm.tokenizer, out / "onnx" / "model.onnx", transform=lowering_passes)
    decoder = OnnxDecoder(path)
    prompt = lm.tokenizer("Shall I compare thee to a summer's day?", add_special_tokens=False)["input_ids"]
    result = generate(decoder, prompt, SamplingConfig(max_new_tokens=24, top_k=40, top_p=0.9, temperature=0.8))
    print(lm.tokenizer.decode(result.tokens, skip_special_tokens=True))
    print(f"decode {result.decode_tokens_per_second:.1f} tokens/s")


if __name__ == "__main__":
    main()

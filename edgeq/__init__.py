"""edgeq: quantize Llama-family models, export them to ONNX, rewrite and run them in ONNX Runtime."""

from edgeq.errors import EdgeqError

__all__ = ["EdgeqError"]
__version__ = "0.1.0"

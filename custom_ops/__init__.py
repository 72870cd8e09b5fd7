"""edgeq custom ops: schemas (``schema``), weight packing (``packing``), NumPy references (``reference``) and the
C++/CUDA op library for ONNX Runtime (``library.get_library``)."""

from edgeq.custom_ops.schema import DOMAIN, DOMAIN_VERSION, OPS, register_schemas

register_schemas()

__all__ = ["DOMAIN", "DOMAIN_VERSION", "OPS", "register_schemas"]

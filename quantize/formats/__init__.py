"""Packed weight formats, one file each, by the name recorded in a quantized checkpoint."""

from edgeq.quantize.formats.float_weight import FloatWeight
from edgeq.quantize.formats.group_quant import GroupQuantWeight
from edgeq.quantize.formats.spqr import SpQRWeight

FORMATS = {cls.FORMAT: cls for cls in (GroupQuantWeight, SpQRWeight, FloatWeight)}

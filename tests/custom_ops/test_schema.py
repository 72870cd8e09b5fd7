import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeq.custom_ops import schema
from edgeq.custom_ops.schema import GROUP_QUANT_MATMUL

from .conftest import gqmm_model, random_problem


def test_domain_and_op_are_registered_with_onnx():
    s = onnx.defs.get_schema("GroupQuantMatMul", 1, "edgeq")
    assert [i.name for i in s.inputs] == GROUP_QUANT_MATMUL.input_names()
    assert sorted(s.attributes) == ["K", "N", "bits", "group_size"]
    schema.register_schemas()  # idempotent


def test_checker_and_shape_inference_accept_the_op():
    p = random_problem(np.random.default_rng(0), (2, 3), K=100, N=7, bits=3, group_size=32)
    model = gqmm_model(p, a_shape=["batch", "seq", 100])
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    y = inferred.graph.output[0].type.tensor_type
    assert y.elem_type == TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in y.shape.dim]
    assert dims == ["batch", "seq", 7]


def test_shape_inference_without_zero_points_and_float16():
    p = random_problem(np.random.default_rng(1), (5,), K=64, N=9, bits=4, group_size=64, dtype=np.float16,
                       with_zero_points=False)
    inferred = onnx.shape_inference.infer_shapes(gqmm_model(p), strict_mode=True)
    y = inferred.graph.output[0].type.tensor_type
    assert y.elem_type == TensorProto.FLOAT16
    assert [d.dim_value for d in y.shape.dim] == [5, 9]


@pytest.mark.parametrize("override, match", [
    (dict(K=99), "A's last dim is 100, attribute K is 99"),
    (dict(N=8), r"B has shape \[7, 4, 12\], expected \[8, 4, 12\]"),
    (dict(bits=4), r"B has shape \[7, 4, 12\], expected \[7, 4, 16\]"),
    (dict(bits=5), "bits=5: must be one of"),
    (dict(group_size=48), "group_size=48: must be one of"),
])
def test_shape_inference_refuses_inconsistent_nodes(override, match):
    p = random_problem(np.random.default_rng(2), (2,), K=100, N=7, bits=3, group_size=32)
    with pytest.raises(onnx.shape_inference.InferenceError, match=match):
        onnx.shape_inference.infer_shapes(gqmm_model(p, **override), strict_mode=True)


def test_make_node_checks_attributes():
    node = GROUP_QUANT_MATMUL.make_node(["A", "B", "s"], ["Y"], K=64, N=8, bits=4, group_size=32)
    assert node.domain == "edgeq" and node.op_type == "GroupQuantMatMul"
    with pytest.raises(ValueError, match="bits=7"):
        GROUP_QUANT_MATMUL.make_node(["A", "B", "s"], ["Y"], K=64, N=8, bits=7, group_size=32)
    with pytest.raises(ValueError, match="'group_size' is required"):
        GROUP_QUANT_MATMUL.make_node(["A", "B", "s"], ["Y"], K=64, N=8, bits=4)
    with pytest.raises(ValueError, match="unknown attribute 'axis'"):
        GROUP_QUANT_MATMUL.make_node(["A", "B", "s"], ["Y"], K=64, N=8, bits=4, group_size=32, axis=1)
    with pytest.raises(ValueError, match="needs inputs"):
        GROUP_QUANT_MATMUL.make_node(["A", "B"], ["Y"], K=64, N=8, bits=4, group_size=32)


def test_helpers():
    assert schema.gqmm_n_groups(100, 32) == 4
    assert schema.gqmm_group_bytes(3, 128) == 48
    assert schema.opset_import() == helper.make_opsetid("edgeq", 1)

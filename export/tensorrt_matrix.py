"""Static check that an ONNX graph only uses what TensorRT 10 supports, per the onnx-tensorrt support matrix
(``export/data/tensorrt_onnx_ops.tsv``, a copy of ``shared/data/tensorrt_onnx_ops.tsv``).

Checked: every op is listed as supported; the opset is in the matrix's range; the data type of each node's first
input is among the op's listed types; and the restrictions that can be checked without running the graph
(weights and axes given as initializers, the LayerNormalization outputs used, Resize modes).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources

import onnx
from onnx import TensorProto

OPSET_RANGE = (9, 20)
_TYPE_NAMES = {TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16", TensorProto.INT32: "INT32",
               TensorProto.INT64: "INT64", TensorProto.BOOL: "BOOL", TensorProto.UINT8: "UINT8", TensorProto.INT8: "INT8"}  # fmt: skip
# (op, input index) whose value must be an initializer (or a Constant) for TensorRT's parser.
_CONSTANT_INPUTS = {("Conv", 1): "weights", ("ConvTranspose", 1): "weights", ("Slice", 3): "axes", ("Squeeze", 1): "axes",
                    ("Unsqueeze", 1): "axes", ("ReduceMean", 1): "axes", ("ReduceSum", 1): "axes", ("CumSum", 1): "axis",
                    ("Pad", 3): "axes"}  # fmt: skip
_RESIZE_MODES = {"nearest", "linear"}
_RESIZE_TRANSFORMS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}


@dataclass(frozen=True)
class OpSupport:
    op: str
    supported: bool
    types: frozenset[str]
    restrictions: str


def support_table() -> dict[str, OpSupport]:
    text = resources.files("export").joinpath("data/tensorrt_onnx_ops.tsv").read_text(encoding="utf-8")
    rows = csv.reader((line for line in text.splitlines() if line and not line.startswith("#")), delimiter="\t")
    next(rows)  # header
    table = {}
    for row in rows:
        op, supported, types, restrictions = (row + ["", "", ""])[:4]
        table[op] = OpSupport(op, supported.strip() == "Y", frozenset(t.strip() for t in types.split(",") if t.strip()), restrictions)
    return table


def _attribute(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def unsupported(model: onnx.ModelProto) -> list[str]:
    """Every reason TensorRT 10 would reject ``model``, one line each; empty when it is fine."""
    table = support_table()
    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        problems.append(f"opset {opset} is outside TensorRT's supported range {OPSET_RANGE}")
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    constants = {t.name for t in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    used = {name for n in model.graph.node for name in n.input} | {o.name for o in model.graph.output}
    for node in model.graph.node:
        where = f"{node.op_type} node {node.name!r}"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: custom domain {node.domain!r} (a plugin would be needed)")
            continue
        support = table.get(node.op_type)
        if support is None or not support.supported:
            problems.append(f"{where}: not supported by TensorRT 10")
            continue
        elem = types.get(node.input[0]) if node.input and node.input[0] else None
        dtype = _TYPE_NAMES.get(elem, TensorProto.DataType.Name(elem)) if elem else None  # DOUBLE etc.: never supported
        if dtype and support.types and dtype not in support.types:
            problems.append(f"{where}: input type {dtype} not among {sorted(support.types)}")
        for index, node_input in enumerate(node.input):
            what = _CONSTANT_INPUTS.get((node.op_type, index))
            if what and node_input and node_input not in constants:
                problems.append(f"{where}: {what} must be an initializer")
        if node.op_type == "LayerNormalization" and any(o and o in used for o in node.output[1:]):
            problems.append(f"{where}: only the first output Y is supported")
        if node.op_type == "Resize":
            mode = _attribute(node, "mode", b"nearest").decode()
            transform = _attribute(node, "coordinate_transformation_mode", b"half_pixel").decode()
            if mode not in _RESIZE_MODES or transform not in _RESIZE_TRANSFORMS or _attribute(node, "antialias", 0):
                problems.append(f"{where}: mode={mode}, coordinate_transformation_mode={transform} unsupported")
    return problems

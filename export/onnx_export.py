"""torch module -> ONNX graph (dynamo exporter, onnxscript clean-up and constant folding) and its fp16 variant.

fp16 keeps fp32 where fp16 is known to break: normalisations and softmax (their reductions), the whole
backward cone of every Sin/Cos — the sinusoidal timestep and position embeddings, whose arguments (t · freq up
to ~1000 rad) lose whole radians in fp16 — and everything computed from tensor shapes alone (e.g. the UNet's
coordinate planes, contextdiff_ref/coordinates.py), which the converter would otherwise leave half converted.
Graph inputs and outputs stay float32.
"""

from __future__ import annotations

import enum
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxscript.optimizer
import torch
from onnx import TensorProto, helper

from runtime.specs import ComponentSpec

logger = logging.getLogger(__name__)

OPSET = 18
TWO_GB = 2**31 - 1
FP32_OPS = ("LayerNormalization", "GroupNormalization", "InstanceNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt")


class Precision(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"


def export_onnx(module: torch.nn.Module, spec: ComponentSpec, sample: dict[str, torch.Tensor]) -> onnx.ModelProto:
    """Export with the spec's names and dynamic axes; returns the cleaned, constant-folded, checked graph.

    ``sample`` must use sizes other than 1 on every dynamic axis, so the exporter keeps them symbolic.
    """
    axes = spec.dynamic_axes()
    dynamic_shapes = tuple({axis: torch.export.Dim.AUTO for axis in axes[t.name]} for t in spec.inputs)
    with torch.no_grad():
        program = torch.onnx.export(
            module, tuple(sample[t.name] for t in spec.inputs), f=None, dynamo=True, opset_version=OPSET,
            input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
            dynamic_shapes=dynamic_shapes, optimize=True, verbose=False,
        )  # fmt: skip
    model = program.model_proto
    onnxscript.optimizer.optimize(model)  # a second pass: folds what the exporter's pass left behind
    onnx.checker.check_model(model, full_check=False)
    return model


def save_onnx(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Write ``model`` to ``path``; weights go to ``<path>.data`` when the graph would exceed protobuf's 2 GB.
    Returns the files written."""
    size = sum(len(t.raw_data) or np.prod(t.dims) * 4 for t in model.graph.initializer)
    if size < TWO_GB - 64 * 2**20:
        onnx.save_model(model, str(path))
        return [path]
    data = path.with_name(path.name + ".data")
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name, size_threshold=1024)
    return [path, data]


def sinusoid_cone(model: onnx.ModelProto) -> set[str]:
    """Names of every node that (transitively) feeds a Sin or Cos, and those nodes themselves. The walk stops at
    Shape/Size nodes: what flows through them is a shape, not a float whose precision matters."""
    producers = {out: node for node in model.graph.node for out in node.output}
    keep: set[str] = set()
    stack = [n for n in model.graph.node if n.op_type in ("Sin", "Cos")]
    while stack:
        node = stack.pop()
        if node.name in keep:
            continue
        keep.add(node.name)
        if node.op_type not in ("Shape", "Size"):
            stack.extend(producers[i] for i in node.input if i in producers)
    return keep


def shape_only_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes whose values depend on the graph inputs' shapes only, never on their values: Shape/Size
    nodes and whatever is computed from them, initializers and constants (the nodes are in topological order)."""
    static = {t.name for t in model.graph.initializer}
    keep: set[str] = set()
    for node in model.graph.node:
        if node.op_type in ("Shape", "Size") or all(not i or i in static for i in node.input):
            keep.add(node.name)
            static.update(node.output)
    return keep


def _is_cast(node: onnx.NodeProto, to: int) -> bool:
    return node.op_type == "Cast" and any(a.name == "to" and a.i == to for a in node.attribute)


def _remove_fp16_round_trips(original: onnx.ModelProto, converted: onnx.ModelProto) -> int:
    """The converter rounds to fp16 wherever a value leaves a node, also between two nodes kept in fp32
    (t · freq -> fp16 -> fp32 -> Sin), and rounds every float initializer, casting it back in front of kept nodes.
    Undo both: an fp32 -> fp16 -> fp32 round trip becomes the fp32 value, and an initializer whose consumers are
    all Cast-to-fp32 gets its original fp32 values back (π·2^k frequencies: 402.12 would become 402.0)."""
    fp32_values = {t.name for t in original.graph.initializer if t.data_type == TensorProto.FLOAT}
    inferred = onnx.shape_inference.infer_shapes(converted)
    fp32_values |= {v.name for v in list(inferred.graph.value_info) + list(inferred.graph.input) if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    producers = {out: node for node in converted.graph.node for out in node.output}
    consumers = defaultdict(list)
    for node in converted.graph.node:
        for name in node.input:
            consumers[name].append(node)
    removed = 0
    for node in converted.graph.node:  # round trips through a Cast-to-fp16 node
        source = producers.get(node.input[0]) if _is_cast(node, TensorProto.FLOAT) else None
        if source is not None and _is_cast(source, TensorProto.FLOAT16) and source.input[0] in fp32_values:
            node.op_type, node.input[0] = "Identity", source.input[0]
            del node.attribute[:]
            removed += 1
    originals = {t.name: t for t in original.graph.initializer if t.data_type == TensorProto.FLOAT}
    for i, tensor in enumerate(converted.graph.initializer):  # round trips through a rounded initializer
        users = consumers.get(tensor.name, [])
        if tensor.name in originals and tensor.data_type == TensorProto.FLOAT16 and users and all(_is_cast(u, TensorProto.FLOAT) for u in users):
            converted.graph.initializer[i].CopyFrom(originals[tensor.name])
            for cast in users:
                cast.op_type = "Identity"
                del cast.attribute[:]
            removed += 1
    return removed


def _float32_outputs(model: onnx.ModelProto) -> None:
    """Make every float16 graph output float32 again (the converter's keep_io_types misses some)."""
    for output in model.graph.output:
        if output.type.tensor_type.elem_type == TensorProto.FLOAT16:
            inner = output.name + "_fp16"
            for node in model.graph.node:
                node.output[:] = [inner if o == output.name else o for o in node.output]
                node.input[:] = [inner if i == output.name else i for i in node.input]
            model.graph.node.append(helper.make_node("Cast", [inner], [output.name], to=TensorProto.FLOAT, name=output.name + "_to_fp32"))
            output.type.tensor_type.elem_type = TensorProto.FLOAT


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The fp16 variant of an fp32 graph (see the module docstring for what stays fp32)."""
    from onnxconverter_common.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    converted = convert_float_to_float16(  # the converter's own list too: ops whose fp16 forms are invalid (Resize scales)
        model, keep_io_types=True, op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS)),
        node_block_list=sorted(sinusoid_cone(model) | shape_only_nodes(model)),
    )
    restored = _remove_fp16_round_trips(model, converted)
    _float32_outputs(converted)
    del converted.graph.value_info[:]  # the converter's types are stale after the rewiring above
    onnxscript.optimizer.optimize(converted)  # drops the Identity nodes left by the restore
    onnx.checker.check_model(converted, full_check=False)
    onnx.shape_inference.infer_shapes(converted, strict_mode=True)  # every type consistent
    logger.debug("fp16 conversion: %d fp32 -> fp16 -> fp32 round trips removed", restored)
    return converted

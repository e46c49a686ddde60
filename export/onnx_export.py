"""torch module -> ONNX graph file (dynamo exporter, onnxscript clean-up and constant folding), its fp16 variant, and
the checks — all by path, so graphs of any size work: weights that would push a file past protobuf's 2 GiB limit go
to ``<file>.data`` (ONNX external data), and nothing here ever serialises a whole model in memory.

Two flavours of the same spec (:class:`Flavour`): ``standard`` graphs use ``ai.onnx`` ops only — inside TensorRT's
support matrix, runnable anywhere — and ``onnxruntime`` graphs have diffusers' attention layers fused into ONNX
Runtime's ``MultiHeadAttention`` contrib op (``export/attention.py``). Both get the same-value rewrites of
``export/rewrites.py`` (GEGLU's value and gate as two projections).

fp16 keeps fp32 where fp16 is known to break: normalisations and softmax (their reductions), the whole
backward cone of every Sin/Cos — the sinusoidal timestep and position embeddings, whose arguments (t · freq up
to ~1000 rad) lose whole radians in fp16 — and everything computed from tensor shapes alone (e.g. the UNet's
coordinate planes, contextdiff_ref/models/coordinates.py), which the converter would otherwise leave half converted.
Graph inputs and outputs stay float32.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import onnx_ir as ir
import onnxscript.optimizer
import torch
from onnx import TensorProto, helper

from export.attention import TRANSLATION_TABLE, contrib_schemas, fused_attention
from export.rewrites import split_geglu
from runtime.specs import ComponentSpec

logger = logging.getLogger(__name__)

OPSET = 18
# Weights go to <file>.data (ONNX external data) above this many bytes: such graphs are written tensor by tensor, never
# serialized whole in memory, and ONNX Runtime memory-maps the file instead of copying it (a session over a 2.2 GB text
# encoder: 0.1 GiB RSS). Protobuf's own limit, 2 GiB per serialized graph, is far above it.
EXTERNAL_DATA_ABOVE = 256 * 2**20
FP32_OPS = ("LayerNormalization", "GroupNormalization", "InstanceNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt")


class Flavour(str, enum.Enum):
    STANDARD = "standard"  # ai.onnx ops only: TensorRT's support matrix, any ONNX runtime
    ONNXRUNTIME = "onnxruntime"  # attention fused into com.microsoft.MultiHeadAttention: ONNX Runtime only


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Keep the libraries' chatter out of what a user reads: the exporter's torchvision-registration warnings, the
    optimizer's per-initializer INFO lines, the pytree ``LeafSpec`` FutureWarning. Real errors still raise."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx._internal.exporter._registration", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(module: torch.nn.Module, spec: ComponentSpec, sample: dict[str, torch.Tensor], path: Path, *, flavour: Flavour) -> list[Path]:
    """Export ``module`` with the spec's names and dynamic axes to ``path`` (cleaned, constant-folded, checked);
    returns the files written (the graph, and its ``.data`` file when the weights need one).

    ``sample`` must use sizes other than 1 on every dynamic axis, so the exporter keeps them symbolic.
    """
    axes = spec.dynamic_axes()
    dynamic_shapes = tuple({axis: torch.export.Dim.AUTO for axis in axes[t.name]} for t in spec.inputs)
    fused = flavour is Flavour.ONNXRUNTIME
    with fused_attention(module) if fused else contextlib.nullcontext(), split_geglu(module), torch.no_grad(), _quiet_libraries(), contrib_schemas():
        program = torch.onnx.export(
            module, tuple(sample[t.name] for t in spec.inputs), f=None, dynamo=True, opset_version=OPSET,
            input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs], dynamic_shapes=dynamic_shapes,
            custom_translation_table=TRANSLATION_TABLE if fused else None, optimize=True, verbose=False,
        )  # fmt: skip
        model = onnxscript.optimizer.optimize(program.model)  # a second pass (in place): folds what the exporter's pass left
    return save_checked(model, path)


def save_checked(model: ir.Model, path: Path) -> list[Path]:
    """Write ``model`` to ``path`` — its weights to ``<path>.data`` above EXTERNAL_DATA_ABOVE bytes — then check the
    written file by path (``onnx.checker`` with strict shape inference). Returns the files written."""
    weights = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    data = path.with_name(path.name + ".data") if weights > EXTERNAL_DATA_ABOVE else None
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is None:
        ir.external_data.load_to_model(model)  # tensors still in another graph's data file (to_fp16's fp32 ones) come inline
    ir.save(model, path, external_data=data.name if data else None)
    for value in model.graph.initializers.values():  # written: let the weights go. onnxscript's rewrite rules keep a
        value.const_value = None  # reference to the last graph they matched (until the next optimize call), and so its weights
    with contrib_schemas():
        onnx.checker.check_model(str(path), full_check=True)
    return [path] + ([data] if data else [])


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


def _float32_values(converted: onnx.ModelProto) -> set[str]:
    """Values the converted graph holds in float32, from its own types: the converter, given an inferred graph, keeps
    ``value_info`` complete (it adds an entry for every Cast it inserts)."""
    g = converted.graph
    typed = [*g.value_info, *g.input]
    return {v.name for v in typed if v.type.tensor_type.elem_type == TensorProto.FLOAT} | {
        t.name for t in g.initializer if t.data_type == TensorProto.FLOAT
    }


def _original_initializers(src: Path, names: set[str]) -> dict[str, TensorProto]:
    """The initializers ``names`` of the graph file ``src`` as stored there (external ones keep pointing to its data)."""
    return {t.name: t for t in onnx.load(str(src), load_external_data=False).graph.initializer if t.name in names}


def _remove_fp16_round_trips(src: Path, converted: onnx.ModelProto) -> int:
    """The converter rounds to fp16 wherever a value leaves a node, also between two nodes kept in fp32
    (t · freq -> fp16 -> fp32 -> Sin), and rounds every float initializer, casting it back in front of kept nodes.
    Undo both: an fp32 -> fp16 -> fp32 round trip becomes the fp32 value, and an initializer whose consumers are
    all Cast-to-fp32 gets its original fp32 values back from ``src`` (π·2^k frequencies: 402.12 would become 402.0)."""
    fp32_values = _float32_values(converted)
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
    rounded = {t.name for t in converted.graph.initializer if t.data_type == TensorProto.FLOAT16
               and consumers.get(t.name) and all(_is_cast(u, TensorProto.FLOAT) for u in consumers[t.name])}  # fmt: skip
    originals = _original_initializers(src, rounded)
    for i, tensor in enumerate(converted.graph.initializer):  # round trips through a rounded initializer
        if tensor.name in originals and originals[tensor.name].data_type == TensorProto.FLOAT:
            converted.graph.initializer[i].CopyFrom(originals[tensor.name])
            for cast in consumers[tensor.name]:
                cast.op_type = "Identity"
                del cast.attribute[:]
            removed += 1
    return removed


def _fp16_readers_of_outputs(model: onnx.ModelProto, fp32_nodes: set[str], fp32_ops: set[str]) -> int:
    """With keep_io_types the converter ends each float output in a Cast to fp32 under the output's name, but leaves the
    output's readers inside the graph (the UNet's ``feature``, step caching's, also feeds the concat of the up layer that takes the branch)
    reading that fp32 value beside their fp16 inputs; point the fp16 ones at the Cast's fp16 input. Returns how many."""
    outputs = {o.name for o in model.graph.output}
    fp16_of = {n.output[0]: n.input[0] for n in model.graph.node if n.output and n.output[0] in outputs and _is_cast(n, TensorProto.FLOAT)}
    moved = 0
    for node in model.graph.node:
        if node.name in fp32_nodes or node.op_type in fp32_ops or (node.output and node.output[0] in fp16_of):
            continue
        for i, name in enumerate(node.input):
            if name in fp16_of:
                node.input[i] = fp16_of[name]
                moved += 1
    return moved


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


# The converter's rule (onnxconverter_common.float16.convert_np_to_float16, which convert_float_to_float16 applies to
# every initializer with these defaults): positive values below MIN_POSITIVE become MIN_POSITIVE, finite ones above
# MAX_FINITE become MAX_FINITE, the same for negative ones; 0, inf and NaN unchanged.
FP16_MIN_POSITIVE, FP16_MAX_FINITE = np.float32(1e-7), np.float32(1e4)


def fp16_rounded(values: np.ndarray) -> np.ndarray:
    """float16 values of ``values`` (any shape, float32 or wider) by the fp16 converter's rule above, bit for bit what
    ``convert_np_to_float16`` gives, in one cast plus a fix-up of the clamped elements (the converter's own function
    makes some ten passes and fancy-indexed copies: 55 s for 2.2 GB, against about 2 s here)."""
    values = np.asarray(values, dtype=np.float32)
    out = values.astype(np.float16)
    magnitude = np.abs(values)
    for clamped, to in (((magnitude > 0) & (magnitude < FP16_MIN_POSITIVE), FP16_MIN_POSITIVE),
                        ((magnitude > FP16_MAX_FINITE) & (magnitude < np.inf), FP16_MAX_FINITE)):  # fmt: skip
        if clamped.any():
            out[clamped] = np.copysign(to, values[clamped]).astype(np.float16)
    return out


def _fp16_from_fp32_file(tensor: ir.ExternalTensor, chunk: int = 2**24) -> np.ndarray:
    """The fp16 values of an fp32 tensor stored externally, rounded by the converter's own rule (:func:`fp16_rounded`),
    read in chunks: never the whole fp32 tensor in memory."""
    count = math.prod(tensor.shape.numpy())
    out = np.empty(count, dtype=np.float16)
    with open(tensor.path, "rb") as f:
        f.seek(tensor.offset or 0)
        for i in range(0, count, chunk):
            out[i : i + chunk] = fp16_rounded(np.fromfile(f, dtype=np.float32, count=min(chunk, count - i)))
    return out.reshape(tensor.shape.numpy())


def to_fp16(src: Path, dst: Path) -> list[Path]:
    """Write the fp16 variant of the fp32 graph file ``src`` to ``dst`` (what stays fp32: the module docstring);
    returns the files written. Any size works: shape inference and the converter see the graph without its external
    weights (the converter only relabels those), which are then converted chunk by chunk from ``src``'s data file."""
    from onnxconverter_common.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    with contrib_schemas():
        model = onnx.shape_inference.infer_shapes(onnx.load(str(src), load_external_data=False))
    keep = sorted(sinusoid_cone(model) | shape_only_nodes(model))
    fp32_ops = set(DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS)
    with warnings.catch_warnings():  # it warns for every weight it clamps into fp16's range
        warnings.simplefilter("ignore", UserWarning)
        converted = convert_float_to_float16(  # in place; the converter's own op list too: ops whose fp16 forms are invalid
            model, keep_io_types=True, disable_shape_infer=True, op_block_list=sorted(fp32_ops), node_block_list=keep,
        )  # fmt: skip
    _fp16_readers_of_outputs(converted, set(keep), fp32_ops)
    restored = _remove_fp16_round_trips(src, converted)
    _float32_outputs(converted)
    del converted.graph.value_info[:]  # the converter's types are stale after the rewiring above; the optimizer re-infers
    logger.debug("fp16 conversion: %d fp32 -> fp16 -> fp32 round trips removed", restored)
    graph = ir.serde.deserialize_model(converted)
    ir.external_data.set_base_dir(graph.graph, src.parent)
    for value in graph.graph.initializers.values():
        tensor = value.const_value
        relabelled = isinstance(tensor, ir.ExternalTensor) and tensor.dtype == ir.DataType.FLOAT16 and tensor.length == 4 * tensor.size
        if relabelled:  # the converter changed its type, not its bytes: they are src's fp32 values
            value.const_value = ir.Tensor(_fp16_from_fp32_file(tensor), name=value.name)
    with contrib_schemas(), _quiet_libraries():
        graph = onnxscript.optimizer.optimize(graph)  # drops the Identity nodes left above
    return save_checked(graph, dst)

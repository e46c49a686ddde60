"""The weight map of an exported graph: which ONNX initializer holds which torch module weight, found by value.

After export, every weight of the module (a parameter with two or more dims: what a LoRA can touch) is looked up among
the graph's initializers by exact equality — as it is, transposed (the exporter stores a Linear's weight as Wᵀ for
its MatMul), or as two row halves (GEGLU's value and gate, export/rewrites.py) — in the initializer's dtype (an fp16
graph's weights are the converter's rounding of the fp32 values). Nothing is guessed: a weight whose value is found
nowhere, or in several initializers, or an initializer that several weights match (equal weights, e.g. all-zero
ones), is left out (listed under ``unmapped``) and a LoRA touching it is refused at load.

Each entry also records where the initializer's bytes lie — its offset in the external data file, or in the graph
file itself for weights stored inline — so the torch-free runtime reads the base values without parsing ONNX
(runtime/lora.py; the files' sha256 in the manifest pin these offsets). The format (``WEIGHT_MAP_VERSION``)::

    {"format_version": 1, "component": "unet", "precision": "fp32",
     "weights": {"down_blocks.0....to_q.weight": [{"initializer": "val_12", "file": "unet.fp32.<key>.onnx",
                 "offset": 4242, "dtype": "float32", "shape": [32, 32], "transpose": true, "rows": [0, 32]}]},
     "unmapped": ["..."]}

``weights`` keys are the module's parameter names without the graph wrapper's attribute (``unet.`` etc.): the names a
diffusers/peft LoRA uses after its component prefix. A stored part holds ``W[rows[0]:rows[1]]`` (transposed where
``transpose``).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import onnx
from onnx import TensorProto

from export.onnx_export import fp16_rounded
from runtime.lora import weight_names

WEIGHT_MAP_VERSION = 1
_FLOATS = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}


def weight_map_name(graph_name: str) -> str:
    """The weight map's file name beside the graph ``graph_name``."""
    return f"{graph_name}.weights.json"


def _key(array: np.ndarray) -> tuple[str, tuple[int, ...], str]:
    data = np.ascontiguousarray(array)
    return str(data.dtype), data.shape, hashlib.sha1(data.tobytes()).hexdigest()  # noqa: S324 — an index, checked by equality


def _initializers(graph: Path) -> Iterator[tuple[str, np.ndarray, str, int]]:
    """(name, values, file, byte offset) of each float initializer of ``graph`` with two or more dims; inline ones are
    located in the graph file by their bytes (skipped when those bytes occur more than once there)."""
    model = onnx.load(str(graph), load_external_data=False)
    blob: bytes | None = None
    for tensor in model.graph.initializer:
        dtype = _FLOATS.get(tensor.data_type)
        if dtype is None or len(tensor.dims) < 2:
            continue
        shape = tuple(tensor.dims)
        if tensor.data_location == TensorProto.EXTERNAL:
            info = {e.key: e.value for e in tensor.external_data}
            file, offset = info["location"], int(info.get("offset", 0))
            values = np.memmap(graph.parent / file, dtype=dtype, mode="r", offset=offset, shape=shape)
        elif tensor.raw_data:
            blob = graph.read_bytes() if blob is None else blob
            offset = blob.find(tensor.raw_data)
            if offset < 0 or blob.find(tensor.raw_data, offset + 1) >= 0:
                continue
            file, values = graph.name, np.frombuffer(tensor.raw_data, dtype=dtype).reshape(shape)
        else:
            continue
        yield tensor.name, values, file, offset


def _candidates(weight: np.ndarray, dtypes: set[str], present: set[tuple[str, tuple[int, ...]]]) -> Iterator[tuple[tuple, dict[str, Any]]]:
    """(index key, how it is stored) for each way the exporter may have stored ``weight`` whose dtype and shape some
    initializer has (``present``): only those are hashed, so a graph of gigabytes is not hashed seven times over."""
    for dtype in dtypes:
        value = fp16_rounded(weight) if dtype == "float16" else weight.astype(np.float32)
        n = value.shape[0]
        forms = [((0, n), False, value)]
        if value.ndim == 2:
            forms.append(((0, n), True, value.T))
            if n % 2 == 0:
                half = n // 2
                forms += [((0, half), t, value[:half].T if t else value[:half]) for t in (False, True)]
                forms += [((half, n), t, value[half:].T if t else value[half:]) for t in (False, True)]
        for rows, transpose, form in forms:
            if (str(form.dtype), form.shape) in present:
                yield _key(form), {"rows": list(rows), "transpose": transpose}


def build_weight_map(params: Mapping[str, np.ndarray], graph: Path, component: str, precision: str) -> dict[str, Any]:
    """The weight map (module docstring) of ``graph`` for the module weights ``params`` (name -> float32 values)."""
    index: dict[tuple, list[tuple[str, str, int]]] = defaultdict(list)
    dtypes: set[str] = set()
    for name, values, file, offset in _initializers(graph):
        index[_key(values)].append((name, file, offset))
        dtypes.add(str(values.dtype))
    present = {(dtype, shape) for dtype, shape, _ in index}
    found: dict[str, list[dict[str, Any]]] = {}
    owners: dict[str, list[str]] = defaultdict(list)  # initializer -> the weights that matched it
    unmapped: list[str] = []
    for param, weight in params.items():
        parts: dict[tuple[int, int], dict[str, Any]] = {}
        ambiguous = False
        for key, how in _candidates(weight, dtypes, present):
            hits = index.get(key, [])
            if len(hits) > 1:
                ambiguous = True
            elif hits and tuple(how["rows"]) not in parts:
                name, file, offset = hits[0]
                parts[tuple(how["rows"])] = {"initializer": name, "file": file, "offset": offset, "dtype": key[0], "shape": list(key[1]), **how}
        whole = parts.get((0, weight.shape[0]))
        chosen = [whole] if whole else [p for r, p in sorted(parts.items()) if r != (0, weight.shape[0])]
        if ambiguous or not chosen or (not whole and len(chosen) != 2):
            unmapped.append(param)
            continue
        found[param] = chosen
        for part in chosen:
            owners[part["initializer"]].append(param)
    for param in [p for p, parts in found.items() if any(len(owners[q["initializer"]]) > 1 for q in parts)]:
        del found[param]  # an initializer several weights match: whose it is, is unknown
        unmapped.append(param)
    return {"format_version": WEIGHT_MAP_VERSION, "component": component, "precision": precision, "weights": found, "unmapped": sorted(unmapped)}


def module_weights(module: Any) -> dict[str, np.ndarray]:
    """The weights (parameters of two or more dims) of a graph wrapper module, float32, named without the wrapper's
    own attribute (``unet.``, ``text_encoder.``, ``adapter.``, ``vae.``)."""
    named = {n: p for n, p in module.named_parameters() if p.ndim >= 2}
    return {short: named[n].detach().float().cpu().numpy() for n, short in weight_names(named).items()}


def graph_weights(graph: Path, weight_map: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The module weights a weight map locates, read back from its graph (float32): what an fp16 graph converted from
    that fp32 graph is matched against when no module is at hand."""
    stored = {name: values for name, values, _, _ in _initializers(graph)}
    out = {}
    for param, parts in weight_map["weights"].items():
        pieces = [np.asarray(stored[p["initializer"]]).T if p["transpose"] else np.asarray(stored[p["initializer"]]) for p in parts]
        out[param] = np.concatenate(pieces).astype(np.float32) if len(pieces) > 1 else pieces[0].astype(np.float32)
    return out


def write_weight_map(path: Path, weight_map: Mapping[str, Any]) -> Path:
    path.write_text(json.dumps(weight_map, indent=1) + "\n", encoding="utf-8")
    return path


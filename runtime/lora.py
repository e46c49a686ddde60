"""LoRA files applied to a built engine directory without rebuilding it. Torch-free (NumPy and ``safetensors.numpy``).

A LoRA file (safetensors only: pickle files can run code and are refused) holds, per adapted module, a down
projection A (r, in[, kh, kw]) and an up projection B (out, r[, 1, 1]), optionally an ``alpha``. Two layouts are read:

- diffusers / peft: ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` (also ``lora.down``/``lora.up``, and peft's
  ``.default`` adapter name), ``text_encoder.<module>...``, ``adapter.<module>...`` (our context adapter); alpha from
  ``<prefix>.<module>.alpha`` tensors or the file's ``lora_alpha`` metadata, else the rank (scale 1, peft's default);
- kohya / A1111: ``lora_unet_<module with _>.lora_down.weight`` / ``lora_up.weight`` / ``.alpha``, ``lora_te_...``
  for the text encoder and ``lora_adapter_...``.

Each module is found through the engine directory's weight map (export/weight_map.py): which initializer holds its
weight, in which layout and dtype, and where its base values lie in the artifact files. The new weight is computed
once on the host, ``W + Σ scale·(alpha/rank)·(B·A)`` in float32 from the base (never from a previous LoRA's weights,
so switching never accumulates), and cast to the initializer's dtype (an fp16 artifact's base is its fp16 weight).
A backend takes the result from :class:`ComponentWeights`: ONNX Runtime overrides those initializers at session
creation (runtime/backends/ort.py), OpenVINO replaces them in the read model before it compiles
(runtime/backends/openvino.py), TensorRT refits a plan built refittable (runtime/backends/tensorrt_refit.py; written,
not run), the Torch backend adds the deltas to its modules' base weights.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from runtime.errors import ContextDiffError
from runtime.manifest import REBUILD, EngineDirectoryError, EngineManifest
from runtime.specs import Component

_PREFIXES = {"unet": Component.UNET, "text_encoder": Component.TEXT_ENCODER, "adapter": Component.ADAPTER}
_KOHYA_PREFIXES = {"unet": Component.UNET, "te": Component.TEXT_ENCODER, "te1": Component.TEXT_ENCODER, "adapter": Component.ADAPTER}
_DIFFUSERS = re.compile(r"^(unet|text_encoder|adapter)\.(.+?)\.(lora_A|lora_B|lora\.down|lora\.up|lora_down|lora_up)(?:\.default)?\.weight$")
_DIFFUSERS_ALPHA = re.compile(r"^(unet|text_encoder|adapter)\.(.+)\.alpha$")
_KOHYA = re.compile(r"^lora_(unet|te1?|adapter)_(.+?)\.(lora_down|lora_up)\.weight$")
_KOHYA_ALPHA = re.compile(r"^lora_(unet|te1?|adapter)_(.+)\.alpha$")
_DOWN = {"lora_A", "lora.down", "lora_down"}
_MAGIC_PICKLE = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive, a bare pickle


class LoraError(ContextDiffError, ValueError):
    """A LoRA file that cannot be applied to an engine directory: the message names the file and the problem."""


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA file and its scale."""

    path: Path
    scale: float = 1.0

    def to_json(self) -> dict[str, Any]:
        return {"file": str(self.path), "scale": self.scale}


def parse_loras(loras: Iterable[LoraSpec | tuple[str | os.PathLike[str], float] | str | os.PathLike[str]] | None) -> tuple[LoraSpec, ...]:
    """LoRA specs from (file, scale) pairs, bare files (scale 1) or specs; a scale must be a finite number."""
    specs = []
    for item in loras or ():
        path, scale = (item.path, item.scale) if isinstance(item, LoraSpec) else (item, 1.0) if isinstance(item, (str, os.PathLike)) else item
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise LoraError(f"{path}: scale {scale!r} is not a finite number")
        specs.append(LoraSpec(Path(path), float(scale)))
    return tuple(specs)


def parse_lora_arg(text: str) -> LoraSpec:
    """``FILE[:SCALE]`` (the CLIs' ``--lora``) -> a spec; a suffix after the last colon that is no number is part of the file."""
    path, sep, scale = text.rpartition(":")
    try:
        value = float(scale) if sep else None
    except ValueError:
        value = None
    return LoraSpec(Path(text)) if value is None else parse_loras([(path, value)])[0]


def add_lora_argument(parser: Any) -> None:
    """The CLIs' repeatable ``--lora FILE[:SCALE]``; a bad scale is argparse's one-line usage error naming --lora."""
    import argparse

    def lora_arg(text: str) -> LoraSpec:
        try:
            return parse_lora_arg(text)
        except LoraError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parser.add_argument("--lora", action="append", type=lora_arg, default=[], metavar="FILE[:SCALE]",
                        help="a LoRA (safetensors) applied at load, scale 1 unless given; repeatable (docs/guides/lora.md)")


@dataclass
class _Pair:
    down: np.ndarray | None = None
    up: np.ndarray | None = None
    alpha: float | None = None


@dataclass
class LoraFile:
    """A LoRA file's modules: (component, module name as written, kohya layout) -> its pair; keys of no known layout."""

    path: Path
    pairs: dict[tuple[Component, str, bool], _Pair] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)


def read_lora(path: str | os.PathLike[str]) -> LoraFile:
    """Read a LoRA safetensors file (either layout, module docstring)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise LoraError(f"{path}: cannot read the LoRA file ({exc.strerror or exc})") from None
    if path.suffix in (".pt", ".pth", ".ckpt", ".bin", ".pkl") or head.startswith(_MAGIC_PICKLE):
        raise LoraError(f"{path}: a pickle file (torch.save/.ckpt/.bin): refused, as loading it can run code; convert it to safetensors")
    from safetensors import SafetensorError, safe_open
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise LoraError(f"{path}: not a readable safetensors file ({exc})") from None
    default_alpha = float(metadata["lora_alpha"]) if "lora_alpha" in metadata else None
    out = LoraFile(path)
    for key, value in tensors.items():
        if m := _DIFFUSERS.match(key) or _KOHYA.match(key):
            kohya = m.re is _KOHYA
            pair = out.pairs.setdefault(((_KOHYA_PREFIXES if kohya else _PREFIXES)[m[1]], m[2], kohya), _Pair(alpha=default_alpha))
            setattr(pair, "down" if m[3] in _DOWN else "up", value)
        elif m := _DIFFUSERS_ALPHA.match(key) or _KOHYA_ALPHA.match(key):
            kohya = m.re is _KOHYA_ALPHA
            out.pairs.setdefault(((_KOHYA_PREFIXES if kohya else _PREFIXES)[m[1]], m[2], kohya), _Pair()).alpha = float(np.asarray(value).reshape(-1)[0])
        else:
            out.unknown.append(key)
    for (component, module, _), pair in out.pairs.items():
        if pair.down is None or pair.up is None:
            raise LoraError(f"{path}: {component.value} module {module} has {'no down (A)' if pair.down is None else 'no up (B)'} projection")
    return out


@dataclass
class ComponentWeights:
    """What LoRAs change in one component: per module weight (the weight map's name) its delta (float32, torch layout),
    and per ONNX initializer its new value (layout and dtype as stored)."""

    deltas: dict[str, np.ndarray] = field(default_factory=dict)
    initializers: dict[str, np.ndarray] = field(default_factory=dict)


def load_weight_map(manifest: EngineManifest, component: Component, lora: Path) -> dict[str, Any]:
    artifacts = manifest.components[component]
    if artifacts.weight_map is None:
        raise EngineDirectoryError(f"{lora}: the engine directory {manifest.root} has no weight map for its {component.value} (built before "
                                   f"LoRA support): rebuild it for LoRAs, {REBUILD}")  # fmt: skip
    return json.loads(artifacts.weight_map.read_text(encoding="utf-8"))["weights"]


def _names(weights: Mapping[str, Any]) -> dict[tuple[str, bool], str]:
    """(module name as a LoRA writes it, kohya layout) -> the weight map's weight name; a text encoder's modules also
    under ``text_model.`` (CLIPTextModel's names before transformers 5 flattened them), and a video model's inflated
    UNet's (``unet.<image UNet module>``, beside ``temporal.``) also under the image UNet's names: an image LoRA of the
    base model applies to the video model's UNet."""
    out = {}
    for name in weights:
        module = name.removesuffix(".weight")
        for alias in dict.fromkeys((module, f"text_model.{module}", module.removeprefix("unet."))):
            out[(alias, False)] = name
            out[(alias.replace(".", "_"), True)] = name
    return out


def _delta(pair: _Pair, scale: float) -> np.ndarray:
    """scale·(alpha/rank)·(B·A) in float32, shaped like the weight (Linear or Conv)."""
    rank = pair.down.shape[0]
    alpha = pair.alpha if pair.alpha is not None else rank
    up, down = pair.up.astype(np.float32).reshape(pair.up.shape[0], rank), pair.down.astype(np.float32).reshape(rank, -1)
    return (up @ down) * np.float32(scale * alpha / rank)


def _base(weight_map_entry: Sequence[Mapping[str, Any]], root: Path) -> np.ndarray:
    """The base weight (float32, torch layout) from its stored parts, read from the artifact files (memory-mapped)."""
    pieces = []
    for part in weight_map_entry:
        stored = np.memmap(root / part["file"], dtype=np.dtype(part["dtype"]), mode="r", offset=part["offset"], shape=tuple(part["shape"]))
        pieces.append(np.asarray(stored.T if part["transpose"] else stored, dtype=np.float32))
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def _stored(merged: np.ndarray, part: Mapping[str, Any]) -> np.ndarray:
    rows = merged[part["rows"][0] : part["rows"][1]]
    value = rows.T if part["transpose"] else rows
    if part["dtype"] == "float16":
        value = np.clip(value, -65504.0, 65504.0)
    return np.ascontiguousarray(value, dtype=np.dtype(part["dtype"])).reshape(part["shape"])


def weight_names(names: Iterable[str]) -> dict[str, str]:
    """A graph wrapper's weight parameter names -> the names a weight map (and a LoRA, after its component prefix) uses:
    without the wrapper's own attribute (``unet.``, ``text_encoder.``, ...) when they all share one."""
    names = list(names)
    strip = len({n.split(".", 1)[0] for n in names}) == 1 and all("." in n for n in names)
    return {n: n.split(".", 1)[1] if strip else n for n in names}


def lora_weights(manifest: EngineManifest, loras: Sequence[LoraSpec], backend: str = "onnxruntime-cpu", *, ignore_unmatched: bool = False,
                 module_shapes: Mapping[Component, Mapping[str, tuple[int, ...]]] | None = None) -> dict[Component, ComponentWeights]:  # fmt: skip
    """The weights ``loras`` change, per component of ``manifest``'s engine directory. Every check happens here, before
    any backend sees a weight: a failure raises :class:`LoraError` (or EngineDirectoryError) and changes nothing.
    ``module_shapes``: for a backend running the modules themselves (Torch), each component's weights (name -> shape):
    no weight map is read and only the deltas are computed."""
    maps: dict[Component, dict[str, Any]] = {}
    shapes: dict[Component, Mapping[str, tuple[int, ...]]] = {}
    deltas: dict[Component, dict[str, np.ndarray]] = {}
    for spec in loras:
        lora = read_lora(spec.path)
        unmatched = list(lora.unknown)
        for (component, module, kohya), pair in lora.pairs.items():
            if component not in manifest.components or (module_shapes is not None and component not in module_shapes):
                unmatched.append(f"{component.value}: {module}")
                continue
            if component not in shapes and module_shapes is None:
                maps[component] = load_weight_map(manifest, component, spec.path)
                shapes[component] = {n: (sum(p["rows"][1] - p["rows"][0] for p in parts), *_base_shape(parts)[1:]) for n, parts in maps[component].items()}
            elif component not in shapes:
                shapes[component] = {n: tuple(shape) for n, shape in module_shapes[component].items()}
            name = _names(shapes[component]).get((module, kohya))
            if name is None:
                unmatched.append(f"{component.value}: {module}")
                continue
            if pair.down.shape[0] != pair.up.shape[1]:
                raise LoraError(f"{spec.path}: {component.value} module {module}: down (A) {pair.down.shape} and up (B) {pair.up.shape} "
                                "have different ranks")  # fmt: skip
            expected = shapes[component][name]
            made = (pair.up.shape[0], *pair.down.shape[1:])
            if math.prod(made) != math.prod(expected) or made[:2] != expected[:2]:
                raise LoraError(f"{spec.path}: {component.value} module {module}: the LoRA makes a weight of shape {made}, the engine's is "
                                f"{expected} (a LoRA for another base model?)")  # fmt: skip
            if spec.scale == 0.0:
                continue  # validated; adds nothing (the base stays bitwise)
            delta = _delta(pair, spec.scale).reshape(expected)
            slot = deltas.setdefault(component, {})
            slot[name] = slot[name] + delta if name in slot else delta
        if unmatched and not ignore_unmatched:
            raise LoraError(f"{spec.path}: {len(unmatched)} LoRA keys match no module of {manifest.root} (e.g. {', '.join(unmatched[:4])}); "
                            "pass ignore_unmatched=True to apply the rest")  # fmt: skip
    out = {}
    for component, changed in deltas.items():
        if backend == "tensorrt" and not (manifest.components[component].plan_info or {}).get("refittable"):
            raise LoraError(f"{loras[0].path}: the {component.value} plan of {manifest.root} was built without --tensorrt-refit, so TensorRT "
                            "cannot take new weights; rebuild with `python export/build_engines.py --backend tensorrt --tensorrt-refit`, "
                            "or use the onnxruntime-cuda backend")  # fmt: skip
        weights = ComponentWeights(deltas=changed)
        for name, delta in changed.items() if component in maps else ():
            merged = _base(maps[component][name], manifest.root) + delta
            for part in maps[component][name]:
                weights.initializers[part["initializer"]] = _stored(merged, part)
        out[component] = weights
    return out


def _base_shape(parts: Sequence[Mapping[str, Any]]) -> tuple[int, ...]:
    shape = tuple(parts[0]["shape"])
    return shape[::-1] if parts[0]["transpose"] else shape


def base_initializers(manifest: EngineManifest, component: Component, names: Iterable[str]) -> dict[str, np.ndarray]:
    """The base values, as stored (layout and dtype), of those initializers in ``names`` that ``component``'s weight map
    locates, read from the artifact files; names it does not locate are left out (the caller says which)."""
    artifacts = manifest.components[component]
    if artifacts.weight_map is None:
        return {}
    parts = {p["initializer"]: p for entry in json.loads(artifacts.weight_map.read_text(encoding="utf-8"))["weights"].values() for p in entry}
    out = {}
    for name in names:
        if (part := parts.get(name)) is not None:
            stored = np.memmap(manifest.root / part["file"], dtype=np.dtype(part["dtype"]), mode="r", offset=part["offset"], shape=tuple(part["shape"]))
            out[name] = np.array(stored)
    return out

"""Reading and validating an engine directory's manifest before anything is loaded. Torch-free.

Every fault — missing directory or file, unknown format version, sha256 mismatch (a truncated or corrupted
artifact), a TensorRT plan built for another TensorRT version or GPU — raises :class:`EngineDirectoryError`
with what is wrong and how to fix it (rebuild with ``python export/build_engines.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import ContextDiffError
from runtime.openvino_runner import OpenVINOPrecision
from runtime.specs import Component, ModelDims, Profile
from runtime.tensorrt_runner import PlanRuntime
from runtime.validation import ModelLimits

FORMAT_VERSION = 1
REBUILD = "rebuild it with `python export/build_engines.py`"


class EngineDirectoryError(ContextDiffError):
    """An engine directory is missing, incomplete, corrupted, or built for something else."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ComponentArtifacts:
    component: Component
    precision: str
    profile: Profile
    onnx: Path
    plan: Path | None
    plan_info: dict[str, Any] | None
    plan_runtime: PlanRuntime = PlanRuntime.FULL  # which TensorRT runs the plan; builds before the field existed: full
    onnx_sha256: tuple[str, ...] = ()  # the ONNX file's sha256, then its external data files' (what a compiled copy derives from)


@dataclass(frozen=True)
class EngineManifest:
    root: Path
    data: dict[str, Any]
    dims: ModelDims
    limits: ModelLimits
    components: dict[Component, ComponentArtifacts]
    openvino_precision: OpenVINOPrecision = OpenVINOPrecision.F32  # recorded by `build_engines.py --openvino-precision`
    num_frames: int | None = None  # a video model's F (frames folded into every batch); None for an image model
    contextual: bool = True  # False: a video model's r ≡ 0 baseline (its adapter outputs 0)

    @property
    def tokenizer_path(self) -> Path:
        return self.root / self.data["tokenizer"]["file"]

    @property
    def scheduler_path(self) -> Path:
        return self.root / self.data["scheduler"]["file"]

    @property
    def max_images(self) -> int:
        return int(self.data["build"]["max_images"])


def _check_file(root: Path, entry: dict[str, Any]) -> Path:
    path = root / entry["file"]
    if not path.is_file():
        raise EngineDirectoryError(f"missing file {path}; the engine directory is incomplete: {REBUILD}")
    if sha256_file(path) != entry["sha256"]:
        raise EngineDirectoryError(f"sha256 mismatch for {path}: the file is truncated or corrupted; {REBUILD}")
    return path


def load_manifest(engine_dir: str | os.PathLike[str], *, verify: bool = True) -> EngineManifest:
    """Parse and check ``engine_dir/manifest.json``; with ``verify`` also the sha256 of every artifact."""
    root = Path(engine_dir)
    if not root.is_dir():
        raise EngineDirectoryError(f"engine directory not found: {root}; build one with `python export/build_engines.py`")
    path = root / "manifest.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EngineDirectoryError(f"missing {path} (an unfinished or interrupted build?): {REBUILD}") from None
    except (OSError, ValueError) as exc:
        raise EngineDirectoryError(f"cannot read {path}: {exc}; {REBUILD}") from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise EngineDirectoryError(f"{path}: format_version={version!r}, this runtime reads {FORMAT_VERSION}; {REBUILD}")
    try:
        return _parse(root, data, verify)
    except (KeyError, TypeError, ValueError) as exc:
        raise EngineDirectoryError(f"{path} is malformed ({type(exc).__name__}: {exc}); {REBUILD}") from None


def _parse(root: Path, data: dict[str, Any], verify: bool) -> EngineManifest:
    model = data["model"]
    dims = ModelDims(**model["dims"])
    limits = ModelLimits(
        num_train_timesteps=dims.num_train_timesteps, sample_channels=dims.channels, default_height=int(data["build"]["height"]),
        default_width=int(data["build"]["width"]), pixel_factor=int(model["pixel_factor"]), vae_scale_factor=dims.vae_scale_factor,
        recommended_guidance_scale=model.get("recommended_guidance_scale"),
    )  # fmt: skip
    check = (lambda entry: _check_file(root, entry)) if verify else (lambda entry: root / entry["file"])
    check(data["tokenizer"]), check(data["scheduler"])
    recorded = model.get("contextual_guidance")  # the scheduler config's variant (method doc §5), beside the limits
    if recorded is not None and recorded not in ("conditional", "guided"):
        raise ValueError(f"model.contextual_guidance={recorded!r} is not 'conditional' or 'guided'")
    components = {}
    for name, entry in data["components"].items():
        component = Component(name)
        onnx_path = check(entry["onnx"])
        for extra in entry["onnx"].get("external_data", []):
            check(extra)
        plan = check(entry["tensorrt"]) if "tensorrt" in entry else None
        plan_runtime = PlanRuntime(entry.get("tensorrt", {}).get("runtime", PlanRuntime.FULL.value))  # unknown name: ValueError, malformed
        shas = (entry["onnx"]["sha256"], *(extra["sha256"] for extra in entry["onnx"].get("external_data", [])))
        components[component] = ComponentArtifacts(component, entry["precision"], Profile.from_json(entry["profile"]), onnx_path, plan, entry.get("tensorrt"),
                                                   plan_runtime, shas)  # fmt: skip
    video = model.get("video")  # {"num_frames": F, "contextual": bool} for a video model
    num_frames = None if video is None else video["num_frames"]
    if num_frames is not None and (isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 2):
        raise ValueError(f"model.video.num_frames={num_frames!r} is not an integer >= 2")
    latent = dims.vae_scale_factor > 1
    required = {Component.TEXT_ENCODER, Component.UNET, Component.ADAPTER} | ({Component.VAE_DECODER} if latent else set())
    if latent and num_frames is not None:
        required.add(Component.VAE_ENCODER)  # inversion starts from the frames' latents
    missing = required - set(components)
    if missing or (not latent and Component.VAE_DECODER in components):
        lacks = f"lacks components {sorted(c.value for c in missing)}" if missing else "has a vae_decoder for a pixel-space model"
        raise EngineDirectoryError(f"{root / 'manifest.json'} {lacks}; {REBUILD}")
    openvino_precision = OpenVINOPrecision(data["build"].get("openvino_precision", OpenVINOPrecision.F32.value))  # unknown: malformed
    contextual = True if video is None else video.get("contextual", True)
    if not isinstance(contextual, bool):
        raise ValueError(f"model.video.contextual={contextual!r} is not true or false")
    return EngineManifest(root, data, dims, limits, components, openvino_precision, num_frames, contextual)


def check_tensorrt_plan(artifacts: ComponentArtifacts, trt_version: str, compute_capability: str) -> None:
    """A plan runs only with the TensorRT version and GPU architecture it was built for — also a lean plan: one built
    without the lean runtime inside runs with the lean runtime of exactly the builder's version. ``trt_version``: the
    version of the module that will run it (``tensorrt``, or ``tensorrt_lean`` for lean plans)."""
    info = artifacts.plan_info or {}
    if info.get("builder_version") != trt_version or info.get("compute_capability") != compute_capability:
        which = "the TensorRT lean runtime" if artifacts.plan_runtime is PlanRuntime.LEAN else "TensorRT"
        raise EngineDirectoryError(
            f"{artifacts.plan}: built with TensorRT {info.get('builder_version')} for compute capability {info.get('compute_capability')}, "
            f"but this machine has {which} {trt_version} and compute capability {compute_capability}; install {which} "
            f"{info.get('builder_version')} or {REBUILD} on this machine"
        )

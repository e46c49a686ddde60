"""Reading and validating an engine directory's manifest before anything is loaded. Torch-free.

Every fault — missing directory or file, unknown format version, sha256 mismatch (a truncated or corrupted
artifact), a TensorRT plan built for another TensorRT version or GPU — raises :class:`EngineDirectoryError`
with what is wrong and how to fix it (rebuild with ``python export/build_engines.py``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import ContextDiffError
from runtime.options import OpenVINOPrecision, PlanRuntime
from runtime.specs import Component, ComponentSpec, ModelDims, Profile, component_spec
from runtime.validation import ModelLimits

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REBUILD = "rebuild it with `python export/build_engines.py`"


class EngineDirectoryError(ContextDiffError):
    """An engine directory is missing, incomplete, corrupted, or built for something else."""


# The on-disk format, one typed definition for the writer (export/build.py) and the reader (load_manifest below).
# ``to_json`` writes exactly the keys a build has always written, in that order; ``from_json`` reads those of older
# builds too (fields added since have defaults). Artifact records (the ONNX graph with its external data, a TensorRT
# plan) stay plain dicts: the reader needs only their ``file``/``sha256`` (and a plan's ``runtime``, builder version
# and compute capability), the rest describes how they were made.


@dataclass(frozen=True)
class FileRecord:
    """A file of the engine directory and the sha256 of its bytes."""

    file: str
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileRecord:
        return cls(str(data["file"]), str(data["sha256"]))


@dataclass(frozen=True)
class VideoRecord:
    num_frames: int  # F: frames folded into every batch
    contextual: bool = True  # False: the r ≡ 0 baseline (its adapter outputs 0)

    def to_json(self) -> dict[str, Any]:
        return {"num_frames": self.num_frames, "contextual": self.contextual}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VideoRecord:
        num_frames, contextual = data["num_frames"], data.get("contextual", True)
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 2:
            raise ValueError(f"model.video.num_frames={num_frames!r} is not an integer >= 2")
        if not isinstance(contextual, bool):
            raise ValueError(f"model.video.contextual={contextual!r} is not true or false")
        return cls(num_frames, contextual)


@dataclass(frozen=True)
class ModelRecord:
    name: str
    hash: str
    dims: ModelDims
    default_height: int
    default_width: int
    pixel_factor: int
    recommended_guidance_scale: float | None = None
    contextual_guidance: str | None = None  # the scheduler config's variant (method doc §5); older builds: absent
    video: VideoRecord | None = None  # a video model's frames; None for an image model

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "hash": self.hash, "dims": dataclasses.asdict(self.dims), "default_height": self.default_height,
               "default_width": self.default_width, "pixel_factor": self.pixel_factor,
               "recommended_guidance_scale": self.recommended_guidance_scale, "contextual_guidance": self.contextual_guidance}  # fmt: skip
        return out | ({"video": self.video.to_json()} if self.video is not None else {})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelRecord:
        guidance = data.get("contextual_guidance")
        if guidance is not None and guidance not in ("conditional", "guided"):
            raise ValueError(f"model.contextual_guidance={guidance!r} is not 'conditional' or 'guided'")
        video = data.get("video")
        return cls(data.get("name", ""), data.get("hash", ""), ModelDims(**data["dims"]), data.get("default_height", 0), data.get("default_width", 0),
                   int(data["pixel_factor"]), data.get("recommended_guidance_scale"), guidance, None if video is None else VideoRecord.from_json(video))  # fmt: skip


@dataclass(frozen=True)
class BuildRecord:
    backend: str  # BuildBackend's value the build resolved to: "tensorrt" or "onnxruntime"
    max_images: int
    height: int
    width: int
    dynamic_size: bool = False
    onnxruntime_version: str = ""
    openvino_precision: OpenVINOPrecision = OpenVINOPrecision.F32  # recorded by `build_engines.py --openvino-precision`
    # step caching's skip branch (`--step-cache-branch`, contextdiff_ref/models/step_cache.py); None: no step caching, or
    # a build before it (EXPORT_VERSION 4 and older split at the whole outermost block)
    step_cache_branch: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = {"backend": self.backend, "max_images": self.max_images, "height": self.height, "width": self.width, "dynamic_size": self.dynamic_size,
                "onnxruntime_version": self.onnxruntime_version, "openvino_precision": OpenVINOPrecision(self.openvino_precision).value}  # fmt: skip
        return data if self.step_cache_branch is None else {**data, "step_cache_branch": self.step_cache_branch}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BuildRecord:
        return cls(data.get("backend", ""), int(data["max_images"]), int(data["height"]), int(data["width"]), data.get("dynamic_size", False),
                   data.get("onnxruntime_version", ""), OpenVINOPrecision(data.get("openvino_precision", OpenVINOPrecision.F32.value)),
                   data.get("step_cache_branch"))  # fmt: skip


@dataclass(frozen=True)
class ComponentRecord:
    precision: str  # Precision's value the artifact was built in (fp16 falls back to fp32 where it is not accurate)
    profile: Profile
    # {"file", "sha256", "external_data": [{"file", "sha256"}], "bytes", "opset", "flavour", "exporter", "weight_map": {"file", "sha256"}};
    # the weight map (which initializer holds which module weight: export/weight_map.py, read by runtime/lora.py) is absent in builds before it
    onnx: dict[str, Any]
    tensorrt: dict[str, Any] | None = None  # {"file", "sha256", "bytes", "builder", "builder_version", "compute_capability", "runtime", "key"}
    note: str = ""
    source_key: str = ""  # hash of what the artifact is made from (the build's cache key)
    io: dict[str, Any] = dataclasses.field(default_factory=dict)  # the component's inputs and outputs (ComponentSpec.to_json)
    # the int8 OpenVINO IR of `--openvino-precision int8` (export/openvino_int8.py): {"file" (.xml), "sha256", "weights": {"file" (.bin),
    # "sha256"}, "bytes", "precision": "int8", "recipe": "hybrid" | "weights", "key", "builder", "calibration": {...}}; None: not built
    openvino: dict[str, Any] | None = None

    @property
    def weight_map(self) -> FileRecord | None:
        """The graph's weight map, or None for an artifact built before weight maps (LoRAs need a rebuild)."""
        entry = self.onnx.get("weight_map")
        return FileRecord.from_json(entry) if entry else None

    def files(self) -> list[FileRecord]:
        """Every file this component's artifacts consist of: the graph, its external data, its weight map, the plan."""
        artifacts = [self.onnx, *self.onnx.get("external_data", []), *([self.tensorrt] if self.tensorrt else [])]
        artifacts += [self.openvino, self.openvino["weights"]] if self.openvino else []
        return [FileRecord.from_json(a) for a in artifacts] + ([self.weight_map] if self.weight_map else [])

    def to_json(self) -> dict[str, Any]:
        out = {"precision": self.precision, "note": self.note, "source_key": self.source_key, "profile": self.profile.to_json(), "io": self.io,
               "onnx": self.onnx}  # fmt: skip
        out |= {"tensorrt": self.tensorrt} if self.tensorrt is not None else {}
        return out | ({"openvino": self.openvino} if self.openvino is not None else {})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ComponentRecord:
        return cls(data["precision"], Profile.from_json(data["profile"]), data["onnx"], data.get("tensorrt"), data.get("note", ""),
                   data.get("source_key", ""), data.get("io", {}), data.get("openvino"))  # fmt: skip


@dataclass(frozen=True)
class Manifest:
    """``manifest.json`` of an engine directory (format :data:`FORMAT_VERSION`)."""

    package_version: str
    model: ModelRecord
    build: BuildRecord
    tokenizer: FileRecord
    scheduler: FileRecord
    components: dict[str, ComponentRecord]  # keyed by Component value, in build order
    format_version: int = FORMAT_VERSION

    def files(self) -> list[FileRecord]:
        return [self.tokenizer, self.scheduler, *(f for c in self.components.values() for f in c.files())]

    def to_json(self) -> dict[str, Any]:
        return {"format_version": self.format_version, "package_version": self.package_version, "model": self.model.to_json(),
                "build": self.build.to_json(), "tokenizer": self.tokenizer.to_json(), "scheduler": self.scheduler.to_json(),
                "components": {name: c.to_json() for name, c in self.components.items()}}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        """Parse a manifest of this format version (KeyError/TypeError/ValueError when malformed)."""
        components = {Component(name).value: ComponentRecord.from_json(entry) for name, entry in data["components"].items()}
        return cls(data.get("package_version", ""), ModelRecord.from_json(data["model"]), BuildRecord.from_json(data["build"]),
                   FileRecord.from_json(data["tokenizer"]), FileRecord.from_json(data["scheduler"]), components, data["format_version"])  # fmt: skip


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
    weight_map: Path | None = None  # which initializer holds which module weight (LoRAs); None: built before weight maps
    feature_output: bool = False  # a step-cache build's UNet: its graph also outputs the feature the shallow UNet takes
    openvino_ir: Path | None = None  # the int8 OpenVINO IR (.xml; its .bin beside it) of `--openvino-precision int8`; None: not built
    openvino_ir_sha256: tuple[str, ...] = ()  # the IR's .xml and .bin sha256 (what a compiled copy derives from)

    @property
    def spec(self) -> ComponentSpec:
        """The spec the artifact was built to (the UNet's with its ``feature`` output in a step-cache build)."""
        return component_spec(self.component, step_cache=self.feature_output)


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
    record: Manifest | None = None  # the parsed manifest.json (``data`` is its JSON)

    @property
    def step_cache(self) -> bool:
        """Whether the directory can run step caching: a shallow UNet, and a UNet that outputs its feature."""
        unet = self.components.get(Component.UNET)
        return Component.UNET_SHALLOW in self.components and unet is not None and unet.feature_output

    @property
    def step_cache_branch(self) -> int | None:
        """The skip branch step caching's graphs split the UNet at (``build.step_cache_branch``); None without step
        caching, or for builds before it was recorded (they split at the whole outermost block)."""
        branch = self.data.get("build", {}).get("step_cache_branch")
        return int(branch) if self.step_cache and branch is not None else None

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
    path = root / MANIFEST
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
        return parse_manifest(root, data, verify=verify)
    except (KeyError, TypeError, ValueError) as exc:
        raise EngineDirectoryError(f"{path} is malformed ({type(exc).__name__}: {exc}); {REBUILD}") from None


def parse_manifest(root: Path, data: dict[str, Any], *, verify: bool = True) -> EngineManifest:
    """The engine directory ``root`` as described by ``data`` (a manifest's JSON, not necessarily written yet: a build
    runs the runtime on its artifacts before it writes the manifest); with ``verify`` the sha256 of every file."""
    record = Manifest.from_json(data)
    model, dims = record.model, record.model.dims
    limits = ModelLimits(
        num_train_timesteps=dims.num_train_timesteps, sample_channels=dims.channels, default_height=record.build.height,
        default_width=record.build.width, pixel_factor=model.pixel_factor, vae_scale_factor=dims.vae_scale_factor,
        recommended_guidance_scale=model.recommended_guidance_scale,
    )  # fmt: skip
    check = (lambda entry: _check_file(root, entry)) if verify else (lambda entry: root / entry["file"])
    check(data["tokenizer"]), check(data["scheduler"])
    components = {}
    for name, entry in record.components.items():
        component = Component(name)
        onnx_path = check(entry.onnx)
        for extra in entry.onnx.get("external_data", []):
            check(extra)
        plan = check(entry.tensorrt) if entry.tensorrt is not None else None
        weight_map = check(entry.weight_map.to_json()) if entry.weight_map is not None else None
        plan_runtime = PlanRuntime((entry.tensorrt or {}).get("runtime", PlanRuntime.FULL.value))  # unknown name: ValueError, malformed
        shas = (entry.onnx["sha256"], *(extra["sha256"] for extra in entry.onnx.get("external_data", [])))
        feature = any(o.get("name") == "feature" for o in entry.io.get("outputs", [])) and component is Component.UNET
        ir, ir_shas = None, ()
        if entry.openvino is not None:
            ir, _ = check(entry.openvino), check(entry.openvino["weights"])
            ir_shas = (entry.openvino["sha256"], entry.openvino["weights"]["sha256"])
        components[component] = ComponentArtifacts(component, entry.precision, entry.profile, onnx_path, plan, entry.tensorrt, plan_runtime, shas,
                                                   weight_map, feature, ir, ir_shas)  # fmt: skip
    num_frames = None if model.video is None else model.video.num_frames
    latent = dims.vae_scale_factor > 1
    required = {Component.TEXT_ENCODER, Component.UNET, Component.ADAPTER} | ({Component.VAE_DECODER} if latent else set())
    if latent and num_frames is not None:
        required.add(Component.VAE_ENCODER)  # inversion starts from the frames' latents
    missing = required - set(components)
    if missing or (not latent and Component.VAE_DECODER in components):
        lacks = f"lacks components {sorted(c.value for c in missing)}" if missing else "has a vae_decoder for a pixel-space model"
        raise EngineDirectoryError(f"{root / MANIFEST} {lacks}; {REBUILD}")
    contextual = True if model.video is None else model.video.contextual
    return EngineManifest(root, data, dims, limits, components, record.build.openvino_precision, num_frames, contextual, record)


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

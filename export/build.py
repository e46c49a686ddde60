"""Model directory -> engine directory: ONNX graphs (fp32 or fp16), TensorRT plans where available, tokenizer,
scheduler and manifest. Every artifact is keyed by a content hash, so unchanged components are reused ("cached")."""

from __future__ import annotations

import dataclasses
import errno
import gc
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnxruntime as ort
import torch

import runtime
from contextdiff_ref.models.graphs import graph_modules, model_dims
from contextdiff_ref.models.model_dir import check_model_dir, load_model_dir, model_limits, runtime_tokenizer_json
from contextdiff_ref.video.model_dir import is_video_model_dir, load_video_model_dir
from export.artifacts import MANIFEST, BuildError, BuildLock, hash_parts, read_manifest, remove_stale, sha256_file  # fmt: skip
from export.build_options import BuildOptions, check_cache_branch, check_options
from export.onnx_export import OPSET, Flavour, export_onnx, to_fp16
from export.openvino_int8 import CalibrationSettings, build_int8, check_prompts, default_prompts
from export.weight_map import build_weight_map, graph_weights, module_weights, weight_map_name, write_weight_map
from export.tensorrt_build import build_plan, compute_capability, tensorrt_status
from runtime.errors import ContextDiffError, InvalidArgumentError, first_line
from runtime.files import TMP_PREFIX, atomic_write, atomic_write_text, staging_dir
from runtime.manifest import BuildRecord, ComponentRecord, FileRecord, Manifest, ModelRecord, VideoRecord, parse_manifest
from runtime.metrics import relative_l2
from runtime.options import BuildBackend, OpenVINOPrecision, PlanRuntime, Precision
from runtime.specs import SPECS, Component, ComponentSpec, ModelDims, Profile, component_spec, make_profile
from runtime.validation import ModelLimits

logger = logging.getLogger(__name__)

EXPORT_VERSION = "5"  # bump when graph wrappers or conversion rules change, to invalidate cached ONNX
FP16_TOLERANCE = 1e-2  # relative L2 error of an fp16 graph against its fp32 graph, on random inputs
CHECK_SIZE = 32  # the fp16 check runs at most 32 x 32 samples: precision is per op, and 64 x 64 would cost minutes
_SOURCE_FOLDERS = {Component.TEXT_ENCODER: ("text_encoder",), Component.UNET: ("unet",), Component.ADAPTER: ("adapter",), Component.VAE_DECODER: ("vae",),
                   Component.VAE_ENCODER: ("vae",), Component.UNET_SHALLOW: ("unet",)}  # fmt: skip
_VIDEO_SOURCE_FOLDERS = {**_SOURCE_FOLDERS, Component.UNET: ("unet", "temporal"), Component.UNET_SHALLOW: ("unet", "temporal"),
                         Component.ADAPTER: ("video_adapter",)}  # fmt: skip
@dataclass(frozen=True)
class ComponentResult:
    component: str
    format: str
    precision: str
    size_bytes: int
    seconds: float
    cached: bool
    note: str = ""


def resolve_backend(requested: BuildBackend) -> tuple[BuildBackend, str | None]:
    version, reason = tensorrt_status()
    if requested is BuildBackend.TENSORRT and version is None:
        raise BuildError(f"--backend tensorrt was asked for, but {reason}; use --backend onnxruntime (or auto)")
    if requested is BuildBackend.AUTO:
        if version is None:
            logger.info("%s: building ONNX Runtime artifacts only", reason)
            return BuildBackend.ONNXRUNTIME, None
        return BuildBackend.TENSORRT, version
    return requested, version if requested is BuildBackend.TENSORRT else None


def _prepare_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(prefix=TMP_PREFIX, dir=out_dir)
        probe.close()
    except OSError as exc:
        raise BuildError(f"output directory {out_dir} is not writable: {exc.strerror or exc}") from None


def _session_output(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    """Run the graph file ``path`` once on the CPU (by path: any size); the session is gone when this returns."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def _fp16_error(fp32: Path, fp16: Path, feed: dict[str, np.ndarray]) -> float:
    """Relative L2 error of the fp16 graph against the fp32 one on ``feed``; inf when it produces NaN/inf."""
    a = _session_output(fp32, feed)
    b = _session_output(fp16, feed)
    if not np.all(np.isfinite(b)):
        return float("inf")
    return relative_l2(b, a)


def _publish(files: list[Path], out_dir: Path, flavour: Flavour, weight_map: Path | None = None) -> dict[str, Any]:
    """Move a graph, its data file and its weight map into ``out_dir`` (the graph last: it names its data) and describe them."""
    for path in [*([weight_map] if weight_map else []), *reversed(files)]:
        os.replace(path, out_dir / path.name)
    graph, *data = [out_dir / p.name for p in files]
    entry = {"file": graph.name, "sha256": sha256_file(graph), "external_data": [{"file": d.name, "sha256": sha256_file(d)} for d in data],
             "bytes": sum(p.stat().st_size for p in [graph, *data]), "opset": OPSET, "flavour": flavour.value,
             "exporter": f"torch {torch.__version__} (dynamo)"}  # fmt: skip
    if weight_map is not None:
        entry["weight_map"] = {"file": weight_map.name, "sha256": sha256_file(out_dir / weight_map.name)}
    return entry


def _entry_files(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The file records of an ONNX artifact: the graph, its external data, its weight map (export/weight_map.py)."""
    return [entry, *entry.get("external_data", []), *([entry["weight_map"]] if entry.get("weight_map") else [])]


def _artifact_intact(out_dir: Path, entry: dict[str, Any] | None, name: str) -> bool:
    if not entry or entry.get("file") != name or not (out_dir / name).is_file():
        return False
    return all((out_dir / f["file"]).is_file() and sha256_file(out_dir / f["file"]) == f["sha256"] for f in _entry_files(entry))


def _check_inputs(spec: ComponentSpec, dims: ModelDims, profile: Profile) -> dict[str, np.ndarray]:
    """Random inputs for tracing and the fp16 check: the profile's opt batch (at least 2, so the batch axis stays
    symbolic), its opt size capped at CHECK_SIZE (a multiple of the model's factor)."""
    q = dims.sample_factor
    cap = max(q, CHECK_SIZE // q * q)
    _, height, width = profile.opt
    return spec.sample_inputs(dims, max(2, profile.opt[0]), min(height, cap), min(width, cap), np.random.default_rng(0))


def _copy_from_cache(cache: Path, name: str, dest: Path) -> tuple[list[Path], dict[str, Any], Path | None] | None:
    """(copies in ``dest`` of the cache's artifact ``name``, graph first; its record; the copy of its weight map, or
    None for an entry written before weight maps), or None when the cache has no intact copy (a record whose files are missing or whose sha256 differs is ignored: built again). A full disk raises."""
    try:
        record = json.loads((cache / f"{name}.json").read_text(encoding="utf-8"))
        entry = record["onnx"]
        if not _artifact_intact(cache, entry, name):
            return None
        dest.mkdir(parents=True, exist_ok=True)
        copies = [dest / f["file"] for f in _entry_files(entry)]
        for path in copies:
            shutil.copyfile(cache / path.name, path)
        files = copies[: 1 + len(entry["external_data"])]
        return files, record, copies[-1] if entry.get("weight_map") else None
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if _disk_full(exc):
            raise
        logger.warning("ONNX cache %s: %s unusable (%s): building it", cache, name, exc)
        return None


def _from_cache(cache: Path, name: str, out_dir: Path, flavour: Flavour) -> tuple[dict[str, Any], str, str] | None:
    """(onnx entry, precision used, note) of the artifact ``name`` copied from the ONNX cache into ``out_dir``, or None."""
    with staging_dir(out_dir) as stage:
        if (copied := _copy_from_cache(cache, name, stage)) is None:
            return None
        files, record, weight_map = copied
        published = _publish(files, out_dir, flavour, weight_map)
    if published["sha256"] != record["onnx"]["sha256"]:
        return None
    return published, record["precision"], record["note"]


def _to_cache(cache: Path, entry: dict[str, Any], out_dir: Path, used: str, note: str) -> None:
    """Copy a built artifact into the ONNX cache: its files first, the record naming them last (each atomically, so
    concurrent builds and killed ones leave only complete entries). A cache that cannot be written is only logged."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        for f in reversed(_entry_files(entry)):  # the graph last
            atomic_write(cache / f["file"], lambda tmp, src=out_dir / f["file"]: shutil.copyfile(src, tmp))
        atomic_write_text(cache / f"{entry['file']}.json", json.dumps({"onnx": entry, "precision": used, "note": note}, indent=2) + "\n")
    except OSError as exc:
        logger.warning("ONNX cache %s not written: %s", cache, exc.strerror or exc)


def _build_onnx(component: Component, take_module: Callable[[], torch.nn.Module], dims: ModelDims, profile: Profile, precision: Precision,
                flavour: Flavour, source_key: str, out_dir: Path, previous: dict[str, Any], cache: Path | None = None,
                read_cache: bool = True, fp32_key: str | None = None, spec: ComponentSpec | None = None) -> tuple[dict[str, Any], str, bool, str]:  # fmt: skip
    """(onnx entry, precision used, cached, note) for one component. Everything is written in a staging directory
    and moved into ``out_dir`` only when complete. ``take_module()`` hands over the torch module (only when the
    artifact must be built); it is dropped as soon as it is exported. With a ``cache`` folder an artifact built
    before for the same key is copied from it (not with ``read_cache`` False: ``--force``), and one built here is
    added to it; an fp16 artifact starts from the cache's fp32 graph of the same component (``fp32_key``: its source
    key) where there is one, instead of exporting again. ``spec``: the component's (None: ``SPECS[component]``)."""
    name = f"{component.value}.{precision.value}.{source_key[:16]}.onnx"
    if _artifact_intact(out_dir, previous.get("onnx"), name):
        return previous["onnx"], previous["precision"], True, previous.get("note", "")
    if cache is not None and read_cache and (hit := _from_cache(cache, name, out_dir, flavour)) is not None:
        entry, used, note = hit
        logger.info("%s: copied from the ONNX cache %s", component.value, cache)
        return entry, used, True, note
    fp32_cached = None
    if cache is not None and read_cache and precision is Precision.FP16 and fp32_key:  # an fp32 build of it: convert its graph
        fp32_cached = (cache, f"{component.value}.{Precision.FP32.value}.{fp32_key[:16]}.onnx")
    entry, used, note = _export_component(component, take_module, dims, profile, precision, flavour, name, out_dir, fp32_cached, spec or SPECS[component])
    if cache is not None:
        _to_cache(cache, entry, out_dir, used, note)
    return entry, used, False, note


def _fp16_checked(fp32_graph: Path, stage: Path, name: str, feed: dict[str, np.ndarray]) -> tuple[list[Path], float]:
    """(the fp16 variant of ``fp32_graph`` written in ``stage``, its relative error against the fp32 graph on ``feed``)."""
    converted = to_fp16(fp32_graph, stage / "fp16" / name)
    gc.collect()  # the converted graph's reference cycles, before ONNX Runtime loads both graphs
    return converted, _fp16_error(fp32_graph, converted[0], feed)


def _weight_map(files: list[Path], weights: dict[str, np.ndarray], component: Component, precision: Precision) -> Path:
    """Write the weight map (export/weight_map.py) of the graph ``files[0]`` beside it; returns its path."""
    mapped = build_weight_map(weights, files[0], component.value, precision.value)
    if mapped["unmapped"]:
        logger.info("%s: %d weights not found by value in the graph (LoRAs cannot touch them): %s", component.value, len(mapped["unmapped"]),
                    ", ".join(mapped["unmapped"][:3]))  # fmt: skip
    return write_weight_map(files[0].with_name(weight_map_name(files[0].name)), mapped)


def _export_component(component: Component, take_module: Callable[[], torch.nn.Module], dims: ModelDims, profile: Profile,
                      precision: Precision, flavour: Flavour, name: str, out_dir: Path,
                      fp32_cached: tuple[Path, str] | None = None, spec: ComponentSpec | None = None) -> tuple[dict[str, Any], str, str]:  # fmt: skip
    """Export (and for fp16 convert and check) one component into ``out_dir``: (onnx entry, precision used, note).
    ``fp32_cached`` (cache, fp32 artifact name): for fp16, convert that cached fp32 graph when it is there and the
    converted graph passes the check; otherwise (or when the check fails: the fp32 fallback keeps this artifact's own
    name) export."""
    spec = spec or SPECS[component]
    feed = _check_inputs(spec, dims, profile)
    if fp32_cached is not None:
        with staging_dir(out_dir) as stage:
            copied = _copy_from_cache(*fp32_cached, stage / "cached")
            if copied is not None and copied[1]["precision"] == Precision.FP32.value and copied[2] is not None:
                logger.info("%s: converting the ONNX cache's fp32 graph to fp16 and comparing ...", component.value)
                converted, error = _fp16_checked(copied[0][0], stage, name, feed)
                if error <= FP16_TOLERANCE:
                    weights = graph_weights(copied[0][0], json.loads(copied[2].read_text(encoding="utf-8")))
                    weight_map = _weight_map(converted, weights, component, Precision.FP16)
                    return _publish(converted, out_dir, flavour, weight_map), Precision.FP16.value, f"fp16 rel. error {error:.1e}"
    with staging_dir(out_dir) as stage:
        logger.info("%s: exporting to ONNX (opset %d, %s graph) ...", component.value, OPSET, flavour.value)
        sample = {k: torch.from_numpy(v) for k, v in feed.items()}
        module = take_module()
        files = export_onnx(module, spec, sample, stage / "fp32" / name, flavour=flavour)
        weights = module_weights(module)  # views of the module's (memory-mapped) weights where they are float32
        del module
        weight_map = _weight_map(files, weights, component, Precision.FP32)
        gc.collect()  # the module is gone now: the fp16 steps below need only the file and the weights' views
        used, note = Precision.FP32, ""
        if precision is Precision.FP16:
            logger.info("%s: converting to fp16 and comparing with fp32 ...", component.value)
            converted, error = _fp16_checked(files[0], stage, name, feed)
            if error <= FP16_TOLERANCE:
                files, used, note = converted, Precision.FP16, f"fp16 rel. error {error:.1e}"
                weight_map = _weight_map(files, weights, component, Precision.FP16)
            else:
                note = f"fp16 rel. error {error:.1e} > {FP16_TOLERANCE:g}: kept fp32"
                logger.warning("%s: %s", component.value, note)
        return _publish(files, out_dir, flavour, weight_map), used.value, note


def _build_plan(component: Component, onnx_entry: dict[str, Any], dims: ModelDims, profile: Profile, precision: str,
                trt_version: str, out_dir: Path, previous: dict[str, Any] | None, options: BuildOptions) -> tuple[dict[str, Any], bool]:  # fmt: skip
    cc, runtime_kind = compute_capability(), options.tensorrt_runtime
    refit = ("refit",) if options.tensorrt_refit else ()  # refittable plans get their own key; the others keep theirs
    key = hash_parts(onnx_entry["sha256"], precision, json.dumps(profile.to_json()), "tensorrt", trt_version, cc, runtime_kind.value, *refit)
    name = f"{component.value}.{precision}.{key[:16]}.plan"
    if _artifact_intact(out_dir, previous, name):
        return previous, True  # type: ignore[return-value]
    workspace = int(options.workspace_gib * 2**30) if options.workspace_gib else None
    atomic_write(out_dir / name, lambda tmp: build_plan(out_dir / onnx_entry["file"], tmp, component_spec(component, step_cache=options.step_cache), dims, profile,
                                                       fp16=precision == "fp16", timing_cache=out_dir / "timing.cache", workspace_bytes=workspace,
                                                       lean=runtime_kind is PlanRuntime.LEAN, refit=options.tensorrt_refit))  # fmt: skip
    return {"file": name, "sha256": sha256_file(out_dir / name), "bytes": (out_dir / name).stat().st_size, "builder": "tensorrt",
            "builder_version": trt_version, "compute_capability": cc, "runtime": runtime_kind.value, "refittable": options.tensorrt_refit,
            "key": key}, False  # fmt: skip


def _source_key(model_dir: Path, component: Component, precision: Precision, flavour: Flavour, video: bool = False, cache_branch: int | None = None) -> str:
    """Hash of what an artifact is made from: the component's files (JSON configs without their "_" metadata keys,
    which record where a model was loaded from, not what it is), the spec and the export settings. A video model's
    UNet and shallow UNet are made from ``unet/`` and ``temporal/`` (which holds num_frames), its adapter from
    ``video_adapter/``. ``cache_branch``: a step-cache build's skip branch (its UNet and shallow UNet are other artifacts
    at each branch), None without step caching."""
    folders = (_VIDEO_SOURCE_FOLDERS if video else _SOURCE_FOLDERS)[component]
    parts: list[str] = []
    for path in sorted(p for folder in folders for p in (model_dir / folder).rglob("*") if p.is_file()):
        if path.suffix == ".json":
            config = {k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items() if not k.startswith("_")}
            parts += [path.name, json.dumps(config, sort_keys=True)]
        else:
            parts += [path.name, sha256_file(path)]
    spec = component_spec(component, step_cache=cache_branch is not None)  # a step-cache build's UNet (with its feature output) is another artifact
    if cache_branch is not None and component in (Component.UNET, Component.UNET_SHALLOW):
        parts.append(f"step cache branch {cache_branch}")
    return hash_parts(*parts, json.dumps(spec.to_json()), str(OPSET), precision.value, flavour.value, EXPORT_VERSION, torch.__version__)


def _resolve_flavour(requested: Flavour | None, backend: BuildBackend) -> Flavour:
    if requested is None:
        return Flavour.STANDARD if backend is BuildBackend.TENSORRT else Flavour.ONNXRUNTIME
    if requested is Flavour.ONNXRUNTIME and backend is BuildBackend.TENSORRT:
        raise InvalidArgumentError("--onnx-flavour", requested.value, "'standard' with --backend tensorrt (TensorRT cannot parse ONNX Runtime's contrib ops)")
    return requested


def _disk_full(exc: BaseException) -> bool:
    """Whether running out of space (or quota) on a disk caused ``exc``, anywhere in its chain."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _failure(what: str, exc: Exception, out_dir: Path) -> BuildError:
    """One line naming what failed and why (the traceback goes to the debug log: ``--verbose``)."""
    logger.debug("%s failed", what, exc_info=exc)
    if _disk_full(exc):
        return BuildError(f"{what}: the disk of {out_dir} is full: nothing half-written was kept, and no manifest names an unfinished "
                          "artifact (a previous complete build stays usable); free some space and run the build again")  # fmt: skip
    return BuildError(f"{what}: {first_line(exc)} (run with --verbose for the traceback)")


@dataclass(frozen=True)
class _ModelFacts:
    """What the manifest needs from a model directory, taken before its weights are let go."""

    dims: ModelDims
    limits: ModelLimits
    tokenizer_json: str
    scheduler_config: dict[str, Any]
    video: VideoRecord | None = None  # a video model's frames and variant


def build_engine_dir(model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], options: BuildOptions = BuildOptions()) -> list[ComponentResult]:
    """Build (or bring up to date) the engine directory ``out_dir`` for the model directory ``model_dir``.

    Any failure raises :class:`BuildError` (or ``InvalidArgumentError``/``ModelDirectoryError`` for bad input) naming
    the component and the cause; ``out_dir`` then holds the previous complete build, or no manifest at all. Each
    component's torch module is dropped once its artifacts are written, so peak memory follows the largest
    component, not the whole model (weights are memory-mapped from the safetensors files)."""
    model_dir, out_dir = Path(model_dir).resolve(), Path(out_dir).resolve()
    check_model_dir(model_dir)
    backend, trt_version = resolve_backend(options.backend)
    if options.tensorrt_refit and backend is not BuildBackend.TENSORRT:
        raise InvalidArgumentError("--tensorrt-refit", True, "only with TensorRT plans (--backend tensorrt): ONNX artifacts take LoRAs as they are")
    if options.tensorrt_runtime is not PlanRuntime.FULL and backend is not BuildBackend.TENSORRT:
        raise InvalidArgumentError("--tensorrt-runtime", options.tensorrt_runtime.value,
                                   "'full' when no TensorRT plans are built (lean plans need TensorRT's builder and a GPU: --backend tensorrt)")  # fmt: skip
    precision = options.precision or (Precision.FP16 if backend is BuildBackend.TENSORRT else Precision.FP32)
    flavour = _resolve_flavour(options.flavour, backend)
    video = is_video_model_dir(model_dir)
    calibration = _calibration(options, model_dir, video, precision)
    if video:  # frames folded into the batch: the inflated UNet and the video adapter, F fixed (runtime/specs.py)
        loaded = load_video_model_dir(model_dir)
        components, video_facts = loaded.components, VideoRecord(loaded.num_frames, loaded.contextual)
        del loaded
    else:
        components, video_facts = load_model_dir(model_dir), None
    check_cache_branch(options, components.unet)
    dims = model_dims(components, options.step_cache_branch)
    facts = _ModelFacts(dims, model_limits(components), runtime_tokenizer_json(components, dims.text_length), components.scheduler_config.to_dict(),
                        video_facts)  # fmt: skip
    height, width = check_options(options, facts.limits)
    modules = graph_modules(components, vae_encoder=True, step_cache=options.step_cache, cache_branch=options.step_cache_branch)  # latent models: image edits and video inversion start from latents
    del components  # from here on, the modules below hold the only references to the weights
    frames = video_facts.num_frames if video_facts else 1
    cache = None if options.onnx_cache is None else Path(options.onnx_cache).resolve()
    _prepare_out_dir(out_dir)
    with BuildLock(out_dir):
        previous = {} if options.force else (read_manifest(out_dir) or {}).get("components", {})
        entries, results = {}, []
        for component in list(modules):
            start = time.perf_counter()
            profile = make_profile(component, dims, max_images=options.max_images, height=height, width=width, dynamic_size=options.dynamic_size,
                                   num_frames=frames)  # fmt: skip
            old, spec = previous.get(component.value, {}), component_spec(component, step_cache=options.step_cache)
            sc = options.step_cache_branch if options.step_cache else None
            try:
                source_key = _source_key(model_dir, component, precision, flavour, video, sc)
                take = lambda c=component: modules.pop(c)  # noqa: E731
                fp32_key = _source_key(model_dir, component, Precision.FP32, flavour, video, sc) if precision is Precision.FP16 and cache else None
                onnx_entry, used, cached, note = _build_onnx(component, take, dims, profile, precision, flavour, source_key, out_dir, old, cache,
                                                             read_cache=not options.force, fp32_key=fp32_key, spec=spec)  # fmt: skip
                modules.pop(component, None)  # cached: never taken
                artifact, fmt, plan = onnx_entry, "onnx", None
                if backend is BuildBackend.TENSORRT:
                    artifact, plan_cached = _build_plan(component, onnx_entry, dims, profile, used, trt_version, out_dir, old.get("tensorrt"), options)
                    plan, fmt, cached = artifact, "tensorrt", cached and plan_cached
                entry = ComponentRecord(precision=used, profile=profile, onnx=onnx_entry, tensorrt=plan, note=note, source_key=source_key,
                                        io=spec.to_json())  # fmt: skip
            except ContextDiffError:
                raise
            except Exception as exc:  # exporter, converter, checker, ONNX Runtime, TensorRT, the disk: one line each
                raise _failure(component.value, exc, out_dir) from exc
            entries[component.value] = entry
            results.append(ComponentResult(component.value, fmt, used, artifact["bytes"], time.perf_counter() - start, cached, note))
            logger.info("%s: %s (%.1f s)", component.value, "cached" if cached else "built", results[-1].seconds)
        try:
            manifest = _make_manifest(out_dir, model_dir, facts, options, height, width, backend, entries)
        except OSError as exc:
            raise _failure("manifest", exc, out_dir) from exc
        if calibration is not None:
            manifest = _with_int8(out_dir, manifest, previous, calibration, results)
        try:
            atomic_write_text(out_dir / MANIFEST, json.dumps(manifest.to_json(), indent=2) + "\n")  # last: the directory is now complete
            remove_stale(out_dir, {f.file for f in manifest.files()})
        except OSError as exc:
            raise _failure("manifest", exc, out_dir) from exc
    return results


def _calibration(options: BuildOptions, model_dir: Path, video: bool, precision: Precision) -> CalibrationSettings | None:
    """The int8 calibration settings (checked before anything is built), or None without --openvino-precision int8."""
    if options.openvino_precision != OpenVINOPrecision.INT8.value:
        return None
    if video:
        raise InvalidArgumentError("--openvino-precision", "int8", "'f32' or 'bf16' for a video model (int8 is calibrated on image generation)")
    if precision is not Precision.FP32:
        raise InvalidArgumentError("--openvino-precision", "int8", f"'f32' or 'bf16' with --precision {precision.value}: int8 IR is made from fp32 ONNX graphs")
    prompts = check_prompts(options.calibration_prompts) if options.calibration_prompts is not None else default_prompts(model_dir)
    return CalibrationSettings(prompts, options.calibration_steps, options.calibration_subset)


def _with_int8(out_dir: Path, manifest: Manifest, previous: dict[str, Any], calibration: CalibrationSettings, results: list[ComponentResult]) -> Manifest:
    """``manifest`` with every component's int8 IR (built, or reused from ``previous``), the build table's rows added."""
    data = manifest.to_json()
    try:
        built = build_int8(out_dir, parse_manifest(out_dir, data), data, previous, calibration)
    except ContextDiffError:
        raise
    except Exception as exc:  # NNCF, OpenVINO, the calibration run, the disk
        raise _failure("int8 OpenVINO IR", exc, out_dir) from exc
    for name, (entry, seconds, cached) in built.items():
        results.append(ComponentResult(name, "openvino", "int8", entry["bytes"], seconds, cached, f"{entry['recipe']} int8"))
    components = {name: dataclasses.replace(record, openvino=built[name][0]) for name, record in manifest.components.items()}
    return dataclasses.replace(manifest, components=components)


def _make_manifest(out_dir: Path, model_dir: Path, facts: _ModelFacts, options: BuildOptions, height: int, width: int, backend: BuildBackend,
                   entries: dict[str, ComponentRecord]) -> Manifest:  # fmt: skip
    """The manifest of a build (not yet written), with the tokenizer and scheduler files it names written."""
    atomic_write_text(out_dir / "tokenizer.json", facts.tokenizer_json)
    atomic_write_text(out_dir / "scheduler.json", json.dumps(facts.scheduler_config, indent=2) + "\n")
    limits = facts.limits
    tokenizer, scheduler = (FileRecord(name, sha256_file(out_dir / name)) for name in ("tokenizer.json", "scheduler.json"))
    model_hash = hash_parts(*(e.source_key for e in entries.values()), tokenizer.sha256, scheduler.sha256)
    manifest = Manifest(
        package_version=runtime.__version__,
        model=ModelRecord(name=model_dir.name, hash=model_hash, dims=facts.dims, default_height=limits.default_height, default_width=limits.default_width,
                          pixel_factor=limits.pixel_factor, recommended_guidance_scale=limits.recommended_guidance_scale,
                          contextual_guidance=facts.scheduler_config["contextual_guidance"], video=facts.video),
        build=BuildRecord(backend=backend.value, max_images=options.max_images, height=height, width=width, dynamic_size=options.dynamic_size,
                          onnxruntime_version=ort.__version__, openvino_precision=OpenVINOPrecision(options.openvino_precision),
                          step_cache_branch=options.step_cache_branch if options.step_cache else None),
        tokenizer=tokenizer, scheduler=scheduler, components=entries,
    )  # fmt: skip
    return manifest

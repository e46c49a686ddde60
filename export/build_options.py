"""What a build is asked (``BuildOptions``, the fields of ``python export/build_engines.py``'s flags) and the checks
made on it before anything is written (:func:`export.build.build_engine_dir` runs them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from torch import nn

from contextdiff_ref.models.step_cache import full_size_branches
from export.onnx_export import Flavour
from export.openvino_int8 import DEFAULT_STEPS, DEFAULT_SUBSET
from runtime.errors import InvalidArgumentError
from runtime.options import BuildBackend, OpenVINOPrecision, PlanRuntime, Precision
from runtime.step_cache import DEFAULT_BRANCH
from runtime.validation import ModelLimits

ONNX_CACHE_ENV = "CONTEXTDIFF_ONNX_CACHE"  # the default of --onnx-cache: a folder of ONNX artifacts shared by builds


@dataclass(frozen=True)
class BuildOptions:
    backend: BuildBackend = BuildBackend.AUTO
    precision: Precision | None = None  # None: fp16 for TensorRT, fp32 for ONNX Runtime
    flavour: Flavour | None = None  # None: standard for TensorRT, onnxruntime (fused attention) for ONNX Runtime
    max_images: int = 1  # images per call; the guidance doubling is accounted for
    height: int | None = None  # pixels; None: the model's default
    width: int | None = None
    dynamic_size: bool = False  # profile from half to twice the size instead of static
    force: bool = False  # rebuild everything
    workspace_gib: float | None = None  # TensorRT builder memory limit
    tensorrt_runtime: PlanRuntime = PlanRuntime.FULL  # LEAN: version-compatible plans the ~50 MB tensorrt_lean runs
    tensorrt_refit: bool = False  # refittable plans (BuilderFlag.REFIT): LoRAs applied by refitting, recorded as "refittable"
    openvino_precision: OpenVINOPrecision = OpenVINOPrecision.F32  # recorded for the runtime's openvino backend; int8 also builds int8 IR
    # int8 only (export/openvino_int8.py): the prompts the UNets are calibrated on (None: the model's own or the built-in
    # ones), denoising steps per prompt, and how many of those UNet calls NNCF calibrates on
    calibration_prompts: tuple[str, ...] | None = None
    calibration_steps: int = DEFAULT_STEPS
    calibration_subset: int = DEFAULT_SUBSET
    # step caching (DeepCache): the UNet also outputs the deep feature at skip branch `step_cache_branch`, and a shallow
    # UNet (unet_shallow) runs the outer layers on it; a video model's: its inflated UNet's (frames folded into the batch)
    step_cache: bool = False
    step_cache_branch: int = DEFAULT_BRANCH  # 0: the least work per cached step; 1: DeepCache's setting for SD-1.5
    # ONNX artifacts shared across engine directories, by the same content key (another batch profile, size or
    # directory of the same model reuses them); None: none. Default: $CONTEXTDIFF_ONNX_CACHE.
    onnx_cache: str | os.PathLike[str] | None = field(default_factory=lambda: os.environ.get(ONNX_CACHE_ENV) or None)


def check_options(options: BuildOptions, limits: ModelLimits) -> tuple[int, int]:
    """The options a build checks before it writes anything; returns the (height, width) built for."""
    if isinstance(options.max_images, bool) or not isinstance(options.max_images, int) or not 1 <= options.max_images <= 64:
        raise InvalidArgumentError("--batch", options.max_images, "an integer from 1 to 64 (images per call)")
    if options.openvino_precision not in {p.value for p in OpenVINOPrecision}:  # the enum's members compare equal to their values
        raise InvalidArgumentError("--openvino-precision", options.openvino_precision, f"one of {[p.value for p in OpenVINOPrecision]}")
    if options.calibration_prompts is not None and options.openvino_precision != OpenVINOPrecision.INT8.value:
        raise InvalidArgumentError("--calibration-prompts", f"{len(options.calibration_prompts)} prompt(s)", "none unless --openvino-precision int8 (they calibrate the int8 UNets)")
    if options.workspace_gib is not None and not options.workspace_gib > 0:
        raise InvalidArgumentError("--workspace-gib", options.workspace_gib, "a positive number of GiB")
    sizes = []
    for name, value, default in (("--height", options.height, limits.default_height), ("--width", options.width, limits.default_width)):
        value = default if value is None else value
        top = limits.max_size_ratio * default // (2 if options.dynamic_size else 1)
        if isinstance(value, bool) or not isinstance(value, int) or value % limits.pixel_factor or not limits.pixel_factor <= value <= top:
            raise InvalidArgumentError(name, value, f"a multiple of {limits.pixel_factor} (the model's size factor) from {limits.pixel_factor} to {top}")
        sizes.append(value)
    return sizes[0], sizes[1]


def check_cache_branch(options: BuildOptions, unet: nn.Module) -> None:
    """With ``--step-cache``, ``--step-cache-branch`` must be a branch the UNet's last up-block takes (its feature has the
    sampled tensor's own size, as the graphs' specs say); the command line refuses the option without ``--step-cache``."""
    branch, top = options.step_cache_branch, full_size_branches(unet) - 1
    if options.step_cache and (isinstance(branch, bool) or not isinstance(branch, int) or not 0 <= branch <= top):
        allowed = f"an integer from 0 to {top} (skip branches taken by this UNet's last up-block)" if top >= 0 else "none: this UNet cannot be split"
        raise InvalidArgumentError("--step-cache-branch", branch, allowed)

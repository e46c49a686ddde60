"""TensorRT plans from ONNX graphs, through Polygraphy's Python API — a thin layer.

TensorRT cannot be installed on the machines this package is developed and tested on, so this module is written
against the documented Polygraphy/TensorRT 10 API and exercised only where ``import tensorrt`` works; elsewhere
its tests skip with that reason and ``build_engines.py`` builds ONNX Runtime artifacts instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

from runtime.backends import cuda_driver
from runtime.files import atomic_path
from runtime.specs import ComponentSpec, ModelDims, Profile

logger = logging.getLogger(__name__)


def tensorrt_status() -> tuple[str | None, str]:
    """(TensorRT version or None, reason it is unusable). The GPU is asked of the CUDA driver itself, so the CPU
    torch wheel the constraints pin does not hide one."""
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or the index's placeholder package raising on import
        return None, f"TensorRT is not importable ({type(exc).__name__}: {exc})"
    if cuda_driver.device_count() == 0:
        return None, "TensorRT is installed but the CUDA driver shows no GPU"
    return trt.__version__, ""


def compute_capability(device_id: int = 0) -> str:
    """"9.0" for an H100: plans are keyed by it."""
    return cuda_driver.gpu_info(device_id).compute_capability


def config_flags(*, fp16: bool, lean: bool, refit: bool = False) -> dict[str, bool]:
    """Polygraphy ``CreateConfig`` flags. ``lean``: a version-compatible plan without the lean runtime inside it
    (TensorRT's ``VERSION_COMPATIBLE`` + ``EXCLUDE_LEAN_RUNTIME``), which the ~50 MB ``tensorrt_lean`` package of the
    builder's exact version runs — no full TensorRT on the deployment machine. Strongly typed (fp16) networks take
    no precision flags; fp32 ones allow tf32. ``refit``: every weight refittable (``BuilderFlag.REFIT``, Polygraphy's
    ``refittable``) so LoRAs can be refit with new values — not ``REFIT_IDENTICAL``, which promises the builder the
    same values back (weight-stripped plans) and lets it optimise for them."""
    return {"tf32": not fp16, "version_compatible": lean, "exclude_lean_runtime": lean, "refittable": refit}


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    spec: ComponentSpec,
    model: ModelDims,
    profile: Profile,
    *,
    fp16: bool,
    timing_cache: Path,
    workspace_bytes: int | None = None,
    lean: bool = False,
    refit: bool = False,
) -> None:
    """Build and write a serialized engine for ``onnx_path`` with one optimization profile (``profile``).

    ``fp16``: the graph is the fp16 ONNX, which keeps fp32 islands on purpose (the timestep and position sinusoids,
    normalisations, softmax); it is parsed as a strongly typed network, so every layer runs in the type the graph
    gives it — a weakly typed network with the fp16 flag would let TensorRT pick fp16 for those islands too.
    Otherwise an fp32 network with tf32 allowed. ``lean``: see :func:`config_flags`. The timing cache at ``timing_cache`` is read if present
    and written back, so later builds reuse measured tactics. Progress is logged by Polygraphy.
    """
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, engine_from_network, network_from_onnx_path, save_engine
    from polygraphy.backend.trt import Profile as TrtProfile

    trt_profile = TrtProfile()
    shapes = [spec.input_shapes(model, *dims) for dims in (profile.min, profile.opt, profile.max)]
    for tensor in spec.inputs:
        trt_profile.add(tensor.name, min=shapes[0][tensor.name], opt=shapes[1][tensor.name], max=shapes[2][tensor.name])
    pools = {trt.MemoryPoolType.WORKSPACE: workspace_bytes} if workspace_bytes else None
    config = CreateConfig(
        **config_flags(fp16=fp16, lean=lean, refit=refit), profiles=[trt_profile], memory_pool_limits=pools,
        load_timing_cache=str(timing_cache) if timing_cache.exists() else None,
    )  # fmt: skip
    network = network_from_onnx_path(str(onnx_path), strongly_typed=fp16)
    logger.info("TensorRT: building %s (%s%s%s) ...", spec.name, "fp16, strongly typed" if fp16 else "tf32", ", lean runtime" if lean else "",
                ", refittable" if refit else "")  # fmt: skip
    with atomic_path(timing_cache, fsync=False) as fresh_cache:  # renamed into place once the plan is saved: never half written
        engine = engine_from_network(network, config=config, save_timing_cache=str(fresh_cache))
        save_engine(engine, path=str(plan_path))

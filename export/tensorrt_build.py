"""TensorRT plans from ONNX graphs, through Polygraphy's Python API — a thin layer.

TensorRT cannot be installed on the machines this package is developed and tested on, so this module is written
against the documented Polygraphy/TensorRT 10 API and exercised only where ``import tensorrt`` works; elsewhere
its tests skip with that reason and ``build_engines.py`` builds ONNX Runtime artifacts instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

from runtime.specs import ComponentSpec, ModelDims, Profile

logger = logging.getLogger(__name__)


def tensorrt_status() -> tuple[str | None, str]:
    """(TensorRT version or None, reason it is unusable)."""
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or the index's placeholder package raising on import
        return None, f"TensorRT is not importable ({type(exc).__name__}: {exc})"
    try:
        import torch

        if not torch.cuda.is_available():
            return None, "TensorRT is installed but no CUDA GPU is visible"
    except ImportError:
        pass
    return trt.__version__, ""


def compute_capability() -> str:
    import torch

    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


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
) -> None:
    """Build and write a serialized engine for ``onnx_path`` with one optimization profile (``profile``).

    tf32 is always allowed; fp16 kernels when ``fp16``. The timing cache at ``timing_cache`` is read if present
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
        tf32=True, fp16=fp16, profiles=[trt_profile], memory_pool_limits=pools,
        load_timing_cache=str(timing_cache) if timing_cache.exists() else None,
    )  # fmt: skip
    network = network_from_onnx_path(str(onnx_path))
    logger.info("TensorRT: building %s (%s) ...", spec.name, "fp16" if fp16 else "tf32")
    engine = engine_from_network(network, config=config, save_timing_cache=str(timing_cache))
    save_engine(engine, path=str(plan_path))

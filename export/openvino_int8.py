"""``build_engines.py --openvino-precision int8``: int8 OpenVINO IR of every component, made with NNCF at build time.

The recipe is optimum-intel's hybrid one for Stable Diffusion: the UNet (and step caching's shallow UNet) gets int8
weights *and* activations on its convolutions (``nncf.quantize``, calibrated) and int8 weights only on its matmuls
(``nncf.compress_weights`` first, then those matmuls left out of the activation quantization); the text encoder, the
VAE and the adapter get int8 weights only (no calibration: their share of a step is small, and the adapter's output,
the contextual shift of method doc §5, is kept at full activation precision). One change from optimum-intel's recipe:
each activation's int8 range is the min and max over *all* the calibration calls (NNCF's ``MINMAX`` estimator), not
its default mean of the per-call extremes. A UNet's activations span very different ranges over the timesteps, and the
mean clips every call whose range is wider than average — the high-noise steps; on the embedded default model that
clipping cost 8 dB of image PSNR against the exact path (21.7 -> 29.7 dB, 24 prompts x 2 images a set, 50 steps).

Calibration data are the UNets' inputs as the runtime's own pipeline feeds them: ``runtime.Generator`` on ONNX Runtime
(the fp32 artifacts just built) runs each calibration prompt for ``steps`` denoising steps; the calls are captured
and ``subset_size`` of them, evenly spaced over prompts and steps, are what NNCF calibrates on. The shallow UNet
calibrates on the same calls with the feature the full UNet output at that step. Prompts: the user's
(``--calibration-prompts FILE``), else the model's own captions where its tokenizer is the shapes vocabulary's (the
shipped models: their training stream), else a built-in list (export/data/calibration_prompts.txt).

Every IR is written in a staging directory and renamed into the engine directory (.bin first, then .xml); the
manifest, which alone makes them part of the engine directory, is written after all of them. A build interrupted
during calibration leaves no manifest naming an int8 IR; the next build removes its leftovers. An IR is reused when
its key — the component's ONNX artifact (for the UNets every artifact the calibration ran), the recipe, NNCF's and
OpenVINO's versions and the calibration settings — matches the previous manifest's and its files are intact.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import numpy as np

from export.artifacts import BuildError, hash_parts, sha256_file
from runtime.backends.openvino import int8_gain_reason
from runtime.errors import InvalidArgumentError
from runtime.files import staging_dir
from runtime.manifest import EngineManifest
from runtime.specs import Component

logger = logging.getLogger(__name__)

RECIPE_VERSION = "2"  # bump when the recipe changes, to invalidate built IR
HYBRID = (Component.UNET, Component.UNET_SHALLOW)  # int8 activations on convolutions; every other component: weights only
DEFAULT_STEPS = 10  # denoising steps per calibration prompt
DEFAULT_SUBSET = 200  # UNet calls NNCF calibrates on (optimum-intel's default number of samples)
BUILTIN_PROMPTS = Path(__file__).resolve().parent / "data" / "calibration_prompts.txt"
INSTALL_HINT = "pip install nncf openvino (or the package's extra: pip install -e '.[openvino]')"


@dataclass(frozen=True)
class CalibrationSettings:
    """What the UNets are calibrated on: ``prompts`` each run for ``steps`` steps (seed ``seed + i`` for prompt i, the
    model's guidance scale, the build's size), ``subset_size`` of those UNet calls evenly spaced."""

    prompts: tuple[str, ...]
    steps: int = DEFAULT_STEPS
    subset_size: int = DEFAULT_SUBSET
    seed: int = 0

    def __post_init__(self) -> None:
        check_prompts(self.prompts)
        for name, value, low in (("calibration steps", self.steps, 1), ("calibration subset size", self.subset_size, 1), ("calibration seed", self.seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidArgumentError(name, value, f"an integer >= {low}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"prompts": list(self.prompts)}


def check_prompts(prompts: Any) -> tuple[str, ...]:
    """``prompts`` as a tuple of non-empty strings; none at all (or a bare string) is refused, naming the fix."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise InvalidArgumentError("calibration prompts", prompts, "a list of at least one non-empty prompt (--calibration-prompts FILE: one "
                                   "prompt per line; leave it out for the default prompts)")  # fmt: skip
    return tuple(prompts)


def read_prompts(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The prompts of a text file: one per line, blank lines and '#' comments skipped; a file with none is refused."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError("--calibration-prompts", str(path), f"a readable UTF-8 text file of prompts ({exc})") from None
    prompts = tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    if not prompts:
        raise InvalidArgumentError("--calibration-prompts", str(path), "a file with at least one prompt (one per line; '#' starts a comment)")
    return prompts


def default_prompts(model_dir: Path, count: int = 20) -> tuple[str, ...]:
    """A shapes model's own captions (``count`` scenes of its training stream) where its tokenizer holds the shapes
    vocabulary as whole tokens, else the built-in list."""
    from tokenizers import Tokenizer

    from contextdiff_ref.data.shapes import caption, sample_scenes, vocabulary

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer" / "tokenizer.json"))
    words = vocabulary()
    if all(len(tokenizer.encode(word, add_special_tokens=False).ids) == 1 for word in words):
        return tuple(caption(scene) for scene in sample_scenes(seed=1234, index=0, count=count))
    return read_prompts(BUILTIN_PROMPTS)


def import_tools() -> tuple[ModuleType, ModuleType]:
    """(openvino, nncf), or a BuildError naming what to install."""
    try:
        ov, nncf = importlib.import_module("openvino"), importlib.import_module("nncf")
    except ImportError as exc:
        raise BuildError(f"--openvino-precision int8 needs NNCF and OpenVINO at build time, which are not importable here ({exc}): {INSTALL_HINT}") from None
    nncf.set_log_level(logging.WARNING)
    return ov, nncf


def capture_unet_inputs(manifest: EngineManifest, settings: CalibrationSettings) -> dict[Component, list[dict[str, np.ndarray]]]:
    """The UNet's (and shallow UNet's) feeds over ``settings``' runs of the runtime's pipeline on ONNX Runtime (CPU)."""
    from runtime.generator import Generator

    generator = Generator.load(manifest, backend="onnxruntime-cpu")
    total = len(settings.prompts) * settings.steps
    keep = set(np.linspace(0, total - 1, min(settings.subset_size, total)).round().astype(int).tolist())
    feeds: dict[Component, list[dict[str, np.ndarray]]] = {c: [] for c in HYBRID if c in manifest.components}
    unet = generator.runners[Component.UNET]
    infer, calls = unet.infer, [0]

    def recording(feed: dict[str, Any]) -> dict[str, Any]:
        out = infer(feed)
        if calls[0] in keep:
            copied = {k: np.array(v) for k, v in feed.items()}
            feeds[Component.UNET].append(copied)
            if Component.UNET_SHALLOW in feeds:  # the feature the full UNet made at this step, as a cached step would get it
                feeds[Component.UNET_SHALLOW].append({**copied, "feature": np.array(out["feature"])})
        calls[0] += 1
        return out

    unet.infer = recording  # type: ignore[method-assign]
    try:
        for i, prompt in enumerate(settings.prompts):
            generator(prompt, num_inference_steps=settings.steps, seed=settings.seed + i, progress=False)
    finally:
        generator.close()
    logger.info("int8 calibration: %d UNet calls captured of %d (%d prompts x %d steps)", len(feeds[Component.UNET]), calls[0],
                len(settings.prompts), settings.steps)  # fmt: skip
    return feeds


def _weight_matmuls(model: Any) -> list[str]:
    """Friendly names of the MatMuls with a constant operand (through Convert/Transpose/Reshape): the layers whose
    weights ``compress_weights`` quantizes, left out of the activation quantization (weights-only int8)."""

    def constant(node: Any) -> bool:
        for _ in range(4):
            if node.get_type_name() == "Constant":
                return True
            if node.get_type_name() not in ("Convert", "Transpose", "Reshape", "Unsqueeze"):
                return False
            node = node.input_value(0).get_node()
        return False

    return [op.get_friendly_name() for op in model.get_ops()
            if op.get_type_name() == "MatMul" and any(constant(op.input_value(i).get_node()) for i in range(2))]  # fmt: skip


def quantize(ov: ModuleType, nncf: ModuleType, onnx_path: Path, component: Component, data: list[dict[str, np.ndarray]] | None) -> Any:
    """The int8 ``openvino.Model`` of one component's ONNX artifact: hybrid with ``data`` (UNets), else weights only."""
    model = ov.Core().read_model(str(onnx_path))
    if data is None:
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    matmuls = _weight_matmuls(model)
    model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM, ignored_scope=nncf.IgnoredScope(types=["Convolution"]))
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    smooth = nncf.AdvancedSmoothQuantParameters(convolution=-1, matmul=-1)  # SmoothQuant off, as in the hybrid recipe
    advanced = nncf.AdvancedQuantizationParameters(smooth_quant_alphas=smooth,  # ranges over every call: module docstring
                                                   activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
    return nncf.quantize(model, nncf.Dataset(data), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(data),
                         ignored_scope=nncf.IgnoredScope(names=matmuls, validate=False), advanced_parameters=advanced)  # fmt: skip


def ir_key(component: Component, manifest_json: dict[str, Any], settings: CalibrationSettings, versions: str) -> str:
    """What a component's IR is made from: its ONNX artifact; for the UNets also every other artifact (they made the
    calibration data), the tokenizer, the scheduler and the calibration settings."""
    parts = [RECIPE_VERSION, versions, component.value, manifest_json["components"][component.value]["onnx"]["sha256"]]
    if component in HYBRID:
        parts += [e["onnx"]["sha256"] for e in manifest_json["components"].values()]
        parts += [manifest_json["tokenizer"]["sha256"], manifest_json["scheduler"]["sha256"], json.dumps(settings.to_json(), sort_keys=True)]
        parts += [json.dumps(manifest_json["build"], sort_keys=True)]  # the calibration's size
    return hash_parts(*parts)


def _intact(out_dir: Path, entry: dict[str, Any] | None, key: str) -> bool:
    return bool(entry) and entry.get("key") == key and all(
        (out_dir / f["file"]).is_file() and sha256_file(out_dir / f["file"]) == f["sha256"] for f in (entry, entry["weights"]))  # fmt: skip


def build_int8(out_dir: Path, manifest: EngineManifest, manifest_json: dict[str, Any], previous: dict[str, Any],
               settings: CalibrationSettings) -> dict[str, tuple[dict[str, Any], float, bool]]:  # fmt: skip
    """(the ``openvino`` manifest entry, seconds, cached) of every component of the (not yet written) manifest
    ``manifest_json`` of ``out_dir``, building the IR that ``previous`` (the last manifest's components) does not
    already hold; the calibration run counts towards the first UNet's seconds."""
    ov, nncf = import_tools()
    if why := int8_gain_reason():  # built all the same: the directory may be deployed on another CPU
        logger.warning("--openvino-precision int8 on this machine: %s (a CPU with AVX512-VNNI, AVX-VNNI or AMX-INT8 gains from it)", why)
    versions = f"nncf {nncf.__version__} / openvino {ov.__version__.split('-')[0]}"
    entries: dict[str, tuple[dict[str, Any], float, bool]] = {}
    feeds: dict[Component, list[dict[str, np.ndarray]]] | None = None
    for component in manifest.components:
        key = ir_key(component, manifest_json, settings, versions)
        old = (previous.get(component.value) or {}).get("openvino")
        if _intact(out_dir, old, key):
            entries[component.value] = (old, 0.0, True)
            logger.info("%s: int8 IR cached", component.value)
            continue
        start = time.perf_counter()
        if component in HYBRID and feeds is None:
            feeds = capture_unet_inputs(manifest, settings)
        logger.info("%s: quantizing to int8 (%s) ...", component.value, "hybrid, calibrated" if component in HYBRID else "weights only")
        model = quantize(ov, nncf, manifest.components[component].onnx, component, feeds[component] if component in HYBRID else None)  # type: ignore[index]
        entry = _publish(ov, model, out_dir, f"{component.value}.int8.{key[:16]}", key, versions, component, settings)
        entries[component.value] = (entry, time.perf_counter() - start, False)
        del model
    return entries


def _publish(ov: ModuleType, model: Any, out_dir: Path, stem: str, key: str, versions: str, component: Component,
             settings: CalibrationSettings) -> dict[str, Any]:  # fmt: skip
    """Save ``model`` as ``stem``.xml/.bin in a staging directory, move them into ``out_dir`` (.bin first) and describe them."""
    with staging_dir(out_dir) as stage:
        ov.save_model(model, str(stage / f"{stem}.xml"), compress_to_fp16=False)
        for suffix in (".bin", ".xml"):
            os.replace(stage / f"{stem}{suffix}", out_dir / f"{stem}{suffix}")
    xml, weights = out_dir / f"{stem}.xml", out_dir / f"{stem}.bin"
    hybrid = component in HYBRID
    return {"file": xml.name, "sha256": sha256_file(xml), "weights": {"file": weights.name, "sha256": sha256_file(weights)},
            "bytes": xml.stat().st_size + weights.stat().st_size, "precision": "int8", "recipe": "hybrid" if hybrid else "weights",
            "key": key, "builder": versions, "calibration": settings.to_json() if hybrid else None}  # fmt: skip

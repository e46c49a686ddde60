"""OpenVINO runner: the engine directory's ONNX artifacts, unchanged, compiled for the CPU by OpenVINO.

Precision is explicit: ``f32`` (exact; the default) or ``bf16`` (OpenVINO's ``INFERENCE_PRECISION_HINT``, asked for
by the caller or recorded at build time), or ``int8``: the runner is then given the engine directory's int8 OpenVINO IR
(NNCF, calibrated at build time: export/openvino_int8.py) instead of the ONNX artifact, its unquantized ops in f32. int8
runs on any CPU, but gains only with int8 dot-product instructions (AVX512-VNNI, AVX-VNNI, AMX-INT8): without them it
runs, with a warning that says so (:func:`int8_gain_reason`). OpenVINO quietly computes in f32 when a CPU lacks bf16 instructions
(measured with OpenVINO 2026.4 on an AVX2-only AMD EPYC: the hint reads back ``f32``); this runner never lets that
pass: bf16 on such a CPU is refused before compiling, and a compiled model whose precision reads back different from
the one asked for is refused after.

Compiled models are cached with OpenVINO's own model cache (``CACHE_DIR``), one directory per key: OpenVINO version,
CPU, component, precision and the sha256 of every artifact file — so a changed artifact or another OpenVINO version
compiles afresh. A new entry is compiled into a temporary directory and renamed into place, so an interrupted compile
never leaves a half-written entry under a key; OpenVINO itself recompiles (and rewrites) a blob it cannot import.

Static shapes: the artifacts have dynamic batch and size, and OpenVINO's CPU plugin runs a model reshaped to fixed
shapes markedly faster (the default video model's UNet at batch 16: 43.5 instead of 53.7 ms in f32, 31.3 instead of
41.0 ms in bf16, measured on a 2-core Xeon with AMX). So the first ``static_shapes`` distinct call shapes of a runner
each get a model compiled for exactly those shapes (cached on disk like the dynamic one, under the key plus the
shapes); the dynamic model runs every other shape. Each compiled model holds its own (repacked) weights, so the
dynamic model, compiled at activation (where it checks the artifact and the precision), is let go before the first
static one compiles and is compiled again (from the cache) only if a shape beyond those comes: generating images at one
size holds one copy, a video edit (inversion's batch, sampling's) two. ``static_shapes=0`` keeps only the dynamic one.

Streams: a call's batch can be split into ``streams`` equal parts run at once, each on its own OpenVINO stream (the
CPU's threads shared out among them) of a static-shape model compiled for one part — OpenVINO's throughput mode
within one call. Small graphs use threads poorly (the default video model's UNet at batch 8: 24.2 ms on 2 threads,
38.6 ms on 1), so two halves on one thread each beat the whole on two: batch 16 in 38.0 instead of 46.8 ms. Batch
entries are independent except a video's frames (``batch_unit``: they stay in one part); a call whose batch does not
split into ``streams`` parts of whole units runs whole, and the results are the same either way (tested).
LoRAs (runtime/lora.py): the initializers a LoRA changes are replaced in the read model before it compiles. OpenVINO's
ONNX frontend keeps each initializer as a Constant whose friendly name is the initializer's name (measured with
OpenVINO 2026.4 on the tiny models: every mapped weight found by name, values equal), so they are found by name; one
that is not found is refused, never silently left at the base. Every compile-cache key of a LoRA'd model ends in the
hash of its replaced values (``-lora<hash>``), so a LoRA'd model is never served from the base's entry nor the base
from a LoRA'd one; each LoRA set's entry holds a full compiled copy on disk, so only the ``LORA_CACHE_SETS`` most
recently used sets per component are kept (besides the base's entries; using an entry marks it). A switch compiles the
new model from the artifact (the base weights: nothing accumulates) before it replaces the old one.
Torch-free; ``openvino`` is imported only when a runner activates (the ``openvino`` extra).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import os
import shutil
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from runtime.backends.base import Array, RunnerBase
from runtime.errors import ContextDiffError, InvalidArgumentError, RunnerError, first_line
from runtime.files import staging_dir
from runtime.options import OpenVINOPrecision
from runtime.specs import ComponentSpec

logger = logging.getLogger(__name__)

DEVICE = "CPU"
# Compiled models of LoRA'd weights kept per component, precision and artifacts besides the base's: the most recently
# used LoRA sets (each a full compiled copy on disk); older sets' entries are removed when another is used.
LORA_CACHE_SETS = 4
INSTALL_HINT = "pip install openvino (or the package's extra: pip install -e '.[openvino]')"


class OpenVINOUnavailableError(ContextDiffError):
    """OpenVINO is not installed, or this CPU cannot run the precision asked for."""


def import_openvino() -> ModuleType:
    try:
        return importlib.import_module("openvino")
    except ImportError as exc:
        raise OpenVINOUnavailableError(f"the openvino backend needs OpenVINO, which is not importable here ({exc}): {INSTALL_HINT}") from None


def cpu_capabilities(core: Any) -> list[str]:
    """OpenVINO's CPU optimisation capabilities, e.g. ['FP32', 'INT8', 'BIN', 'EXPORT_IMPORT'] (+ 'BF16', 'FP16')."""
    return [str(c) for c in core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")]


def bf16_unsupported_reason(core: Any) -> str | None:
    """None where this CPU computes bf16 natively, else why not (OpenVINO would silently run f32)."""
    capabilities = cpu_capabilities(core)
    if "BF16" in capabilities:
        return None
    name = core.get_property(DEVICE, "FULL_DEVICE_NAME")
    return f"this CPU ({name}) has no bf16 instructions (OpenVINO reports {capabilities}; bf16 needs AVX512-BF16 or AMX)"


INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # /proc/cpuinfo flags of int8 dot-product instructions


def int8_gain_reason(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """None where this CPU has int8 dot-product instructions (``INT8_FLAGS``), else why int8 cannot gain here (also
    where the flags cannot be read: not Linux). Without them OpenVINO emulates int8 with wider instructions, and the
    int8 IR is no faster than f32, only less exact."""
    try:
        flags = {word for line in cpuinfo.read_text().splitlines() if line.startswith("flags") for word in line.split(":", 1)[1].split()}
    except OSError as exc:
        return f"this CPU's flags could not be read ({cpuinfo}: {exc.strerror or exc}), so int8 may not gain here"
    if flags & set(INT8_FLAGS):
        return None
    return f"this CPU has none of {', '.join(INT8_FLAGS)}: int8 computes no faster than f32 here, only less exactly"


def openvino_unavailable_reason(precision: OpenVINOPrecision) -> str | None:
    """None where OpenVINO can run ``precision`` on this CPU, else why not (not installed, or no bf16 here). int8 runs
    wherever OpenVINO does (whether it gains: :func:`int8_gain_reason`)."""
    try:
        ov = import_openvino()
    except OpenVINOUnavailableError as exc:
        return str(exc)
    return bf16_unsupported_reason(ov.Core()) if precision is OpenVINOPrecision.BF16 else None


def _precision_name(value: Any) -> str:
    """OpenVINO reports precisions as element types (``<Type: 'float32'>``) or strings; normalised to f32/bf16/..."""
    text = str(getattr(value, "get_type_name", lambda: value)()).lower()
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(text, text)


def cache_key(core: Any, ov_version: str, component: str, precision: OpenVINOPrecision, artifact_sha256: Sequence[str]) -> Path:
    """Relative cache directory for one compiled component: <OpenVINO version + CPU>/<component>-<precision>-<artifacts>."""
    cpu = hashlib.sha256(f"{core.get_property(DEVICE, 'FULL_DEVICE_NAME')}|{cpu_capabilities(core)}".encode()).hexdigest()[:8]
    artifacts = hashlib.sha256("|".join(artifact_sha256).encode()).hexdigest()[:16]
    return Path(f"openvino-{ov_version.split('-')[0]}-cpu{cpu}") / f"{component}-{precision.value}-{artifacts}"


def shapes_tag(shapes: Sequence[tuple[int, ...]]) -> str:
    """A cache-key suffix for static input shapes, in input order: ((2, 3, 32, 32), (2,)) -> '2x3x32x32_2'."""
    return "_".join("x".join(map(str, shape)) for shape in shapes)


def compile_cached(core: Any, model: Path | Any, config: dict[str, Any], cache_root: Path | None, key: Path | None, *,
                   lora_sets: int = LORA_CACHE_SETS) -> tuple[Any, bool]:  # fmt: skip
    """Compile ``model`` (an ONNX file, or an ``openvino.Model``) for the CPU, through the cache entry ``cache_root/key``
    when both are given.

    Returns (compiled model, loaded from the cache). A cache that cannot be written (a read-only engine directory) is
    skipped with a warning; nothing else about the cache can fail a load. An entry of a LoRA'd model (``-lora<hash>``)
    is marked used, and entries of LoRA sets beyond the ``lora_sets`` most recently used are removed (:func:`prune_lora_sets`)."""
    name = model.name if isinstance(model, Path) else model.get_friendly_name()
    model = str(model) if isinstance(model, Path) else model
    if cache_root is None or key is None:
        return core.compile_model(model, DEVICE, config), False
    entry = cache_root / key
    if entry.is_dir():  # OpenVINO imports the blob, or recompiles and rewrites one it cannot import
        start = time.time()
        compiled = core.compile_model(model, DEVICE, {**config, "CACHE_DIR": str(entry)})
        hit = bool(compiled.get_property("LOADED_FROM_CACHE"))
        if not hit:  # blobs of older paths of the same artifacts (the engine directory moved) are dead weight
            logger.warning("%s: OpenVINO cache entry %s was not usable; recompiled into it", name, entry)
            for blob in entry.glob("*.blob"):
                if blob.stat().st_mtime < start:
                    blob.unlink(missing_ok=True)
        prune_lora_sets(entry, lora_sets)
        return compiled, hit
    with contextlib.ExitStack() as stack:
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            stage = stack.enter_context(staging_dir(entry.parent))  # removed on leaving, renamed or not
        except OSError as exc:
            logger.warning("OpenVINO cache %s is not writable (%s): compiling %s without a cache", cache_root, exc, name)
            return core.compile_model(model, DEVICE, config), False
        compiled = core.compile_model(model, DEVICE, {**config, "CACHE_DIR": str(stage)})
        _prune(entry)
        try:
            stage.rename(entry)  # complete entries only ever appear under a key
        except OSError:  # another process put the same entry in place first: theirs is as good
            pass
    prune_lora_sets(entry, lora_sets)
    return compiled, False


def weights_tag(overrides: Mapping[str, np.ndarray]) -> str:
    """A cache-key suffix for replaced weights: '' for none (the base), else 'lora' + a hash of their names and values."""
    if not overrides:
        return ""
    digest = hashlib.sha256()
    for name in sorted(overrides):
        value = np.ascontiguousarray(overrides[name])
        digest.update(f"{name}|{value.dtype}|{value.shape}|".encode())
        digest.update(memoryview(value).cast("B"))
    return f"lora{digest.hexdigest()[:16]}"


def replace_constants(ov: ModuleType, model: Any, overrides: Mapping[str, np.ndarray], path: Path) -> Any:
    """``model`` (read from ``path``) with the Constants named like the initializers in ``overrides`` holding the new
    values (same shape and element type, checked)."""
    constants: dict[str, list[Any]] = {}
    for node in model.get_ops():
        if node.get_type_name() == "Constant" and node.get_friendly_name() in overrides:
            constants.setdefault(node.get_friendly_name(), []).append(node)
    missing = sorted(set(overrides) - set(constants))
    if missing:
        raise OpenVINOUnavailableError(f"{path}: OpenVINO {ov.__version__} read no constant for the initializer(s) {missing[:3]} a LoRA changes "
                                       "(renamed or folded by its ONNX frontend); apply this LoRA with onnxruntime-cpu")  # fmt: skip
    for name, nodes in constants.items():
        value = np.ascontiguousarray(overrides[name])
        for node in nodes:
            shape, kind = tuple(node.get_output_shape(0)), node.get_output_element_type(0).to_dtype()
            if shape != value.shape or kind != value.dtype:
                raise OpenVINOUnavailableError(f"{path}: OpenVINO's constant {name} is {kind} {shape}, the LoRA'd weight {value.dtype} {value.shape}")
            new = ov.op.Constant(value)
            new.set_friendly_name(name)
            node.output(0).replace(new.output(0))
    model.validate_nodes_and_infer_types()
    return model


def _lora_tag(name: str) -> str | None:
    """The LoRA set of a cache entry's name (<component>-<precision>-<artifacts>[-lora<hash>][-<shapes>...]), or None (the base)."""
    parts = name.split("-")
    return parts[3] if len(parts) > 3 and parts[3].startswith("lora") else None


def prune_lora_sets(entry: Path, keep: int) -> None:
    """Mark the cache entry ``entry`` used now (its directory's mtime) and, if it is a LoRA'd model's, remove the
    entries of every LoRA set of the same component, precision and artifacts but the ``keep`` most recently used
    (a set's entries: its dynamic model and its static-shape ones). The base's entries are never removed here. An
    entry another process is compiling is not yet under its name (it is staged); one it is reading stays readable
    (open files outlive their names)."""
    try:
        os.utime(entry)
    except OSError:  # not written (a read-only cache, or a concurrent prune): nothing to mark
        return
    tag = _lora_tag(entry.name)
    if tag is None:
        return
    prefix = "-".join(entry.name.split("-")[:3]) + "-"
    used: dict[str, float] = {}
    entries: dict[str, list[Path]] = {}
    for other in entry.parent.iterdir():
        other_tag = _lora_tag(other.name) if other.name.startswith(prefix) and other.is_dir() else None
        if other_tag is not None:
            entries.setdefault(other_tag, []).append(other)
            used[other_tag] = max(used.get(other_tag, 0.0), other.stat().st_mtime)
    used[tag] = float("inf")  # the set in use now is always kept
    for stale in sorted(used, key=used.__getitem__, reverse=True)[max(keep, 1):]:
        for path in entries[stale]:
            logger.info("OpenVINO cache: removing %s (LoRA set %s, beyond the %d most recently used)", path, stale, keep)
            shutil.rmtree(path, ignore_errors=True)


def _prune(entry: Path) -> None:
    """Entries of the same component and precision for other artifacts are stale: a rebuild replaced them. (Entry
    names: <component>-<precision>-<artifacts>[-<static shapes>]; the same artifacts' other shapes stay.)"""
    component, precision, artifacts = entry.name.split("-")[:3]
    for other in entry.parent.iterdir():
        parts = other.name.split("-")
        if other.is_dir() and len(parts) >= 3 and parts[:2] == [component, precision] and parts[2] != artifacts:
            shutil.rmtree(other, ignore_errors=True)


class OpenVINORunner(RunnerBase):
    """One component's ONNX artifact compiled by OpenVINO for the CPU; NumPy in, NumPy out.

    ``path``: the ONNX artifact, or for precision int8 the int8 IR's .xml. ``cache_root``: directory of the compiled-model cache (None: no cache); ``artifact_sha256``: the sha256 of the
    artifact's files (from the manifest), part of the cache key. ``threads``: OpenVINO's inference threads (None: all).
    ``static_shapes``: how many distinct call shapes get a model compiled for exactly their shapes (module docstring);
    the first call at each of them compiles it (0.5 s for the default video model's UNet; loaded from the cache later).
    ``streams``: how many parts a call's batch is split into, run at once on as many OpenVINO streams (module
    docstring; 1: whole calls); ``batch_unit``: batch entries that stay together (a video model's frame count).
    ``lora_cache_sets``: how many LoRA sets' compiled models the cache keeps for this component (the most recently used).
    """

    def __init__(self, spec: ComponentSpec, path: Path, *, precision: OpenVINOPrecision = OpenVINOPrecision.F32, cache_root: Path | None = None,
                 artifact_sha256: Sequence[str] = (), threads: int | None = None, static_shapes: int = 2, streams: int = 1,
                 batch_unit: int = 1, lora_cache_sets: int = LORA_CACHE_SETS) -> None:  # fmt: skip
        super().__init__(spec)
        if not isinstance(precision, OpenVINOPrecision):
            raise InvalidArgumentError("precision", precision, f"one of {[p.value for p in OpenVINOPrecision]}")
        if isinstance(static_shapes, bool) or not isinstance(static_shapes, int) or static_shapes < 0:
            raise InvalidArgumentError("static_shapes", static_shapes, "an int >= 0 (how many call shapes get a static-shape compile)")
        for name, value in (("streams", streams), ("batch_unit", batch_unit), ("lora_cache_sets", lora_cache_sets)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(name, value, "an int >= 1")
        self.path, self.precision, self.cache_root, self.artifact_sha256, self.threads = path, precision, cache_root, tuple(artifact_sha256), threads
        self.static_shapes, self.streams, self.batch_unit, self.lora_cache_sets = static_shapes, streams, batch_unit, lora_cache_sets
        self.request = None
        self.loaded_from_cache = False
        self._static: dict[tuple[tuple[int, ...], ...], list[Any]] = {}  # call shapes -> infer requests (one per part) of a static-shape model
        self._compile: Any = None  # (shapes or None for the dynamic model, streams) -> compiled model, set at activation
        self._overrides: dict[str, np.ndarray] = {}  # initializers a LoRA changed (runtime/lora.py): name -> value as stored

    def prepare_weights(self, weights: Any) -> Callable[[], None]:
        """LoRA weights: the touched initializers replaced in the read model before it compiles (module docstring),
        always over the artifact's base weights. For an active runner the returned call drops the compiled models,
        then compiles the new one (so a switch never holds the component twice); if that fails it is back on its
        previous weights, and raises. Its static-shape models are compiled again at their next call (from the cache
        where seen)."""
        overrides = dict(weights.initializers) if weights is not None else {}
        if not self.active:
            return lambda: setattr(self, "_overrides", overrides)

        def commit() -> None:
            previous = self._overrides
            self._static.clear()
            self.request = self._compile = None  # the old compiled model's weights are freed before the new ones load
            try:
                self.request, self._compile, self.loaded_from_cache = self._load(overrides)
            except Exception as exc:
                self.request, self._compile, self.loaded_from_cache = self._load(previous)
                raise RunnerError(f"{type(self).__name__} could not load {self.spec.name} with new weights: {first_line(exc)}") from exc
            self._overrides = overrides

        return commit

    def _activate(self) -> None:
        self.request, self._compile, self.loaded_from_cache = self._load(self._overrides)

    def _load(self, overrides: Mapping[str, np.ndarray]) -> tuple[Any, Callable[..., Any], bool]:
        """(the dynamic model's infer request, the compile function for static shapes, loaded from the cache) with
        ``overrides`` replacing the base weights."""
        ov = import_openvino()
        core = ov.Core()
        if self.precision is OpenVINOPrecision.BF16 and (why := bf16_unsupported_reason(core)):
            raise OpenVINOUnavailableError(f"{self.spec.name}: precision 'bf16' was asked for, but {why}; use precision 'f32'")
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": self.precision.compute_hint, "PERFORMANCE_HINT": "LATENCY"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        key = cache_key(core, ov.__version__, self.spec.name, self.precision, self.artifact_sha256) if self.artifact_sha256 else None
        if key is not None and (tag := weights_tag(overrides)):
            key = key.with_name(f"{key.name}-{tag}")

        def read() -> Path | Any:
            """The artifact as OpenVINO reads it with the overrides in place (the file itself when there are none)."""
            return replace_constants(ov, core.read_model(str(self.path)), overrides, self.path) if overrides else self.path

        compiled, hit = self._compiled(ov, core, read(), config, key)

        def compile_for(shapes: tuple[tuple[int, ...], ...] | None, streams: int = 1) -> Any:
            """The model compiled for these input shapes (None: the dynamic one) and OpenVINO streams, through the cache."""
            if shapes is None:
                return self._compiled(ov, core, read(), config, key)[0]
            model = core.read_model(str(self.path)) if not overrides else read()
            try:
                model.reshape({t.name: list(shape) for t, shape in zip(self.spec.inputs, shapes)})
            except RuntimeError as exc:
                raise InvalidArgumentError(f"{self.spec.name} input shapes", shapes, f"shapes {self.path.name} takes ({first_line(exc, with_type=False)})") from exc
            name, options = shapes_tag(shapes), config
            if streams > 1:  # the threads shared out among the streams (OpenVINO's throughput mode)
                name, options = f"{name}-s{streams}", {**config, "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": streams}
            return self._compiled(ov, core, model, options, key and key.with_name(f"{key.name}-{name}"))[0]

        got = _precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        if got != self.precision.compute_hint:  # never a silent precision change
            raise OpenVINOUnavailableError(f"{self.spec.name}: OpenVINO {ov.__version__} compiled for {got!r} although {self.precision.compute_hint!r} "
                                           "was asked for; refusing to run at another precision")  # fmt: skip
        names = {name for port in compiled.outputs for name in port.get_names()}
        missing = [t.name for t in self.spec.outputs if t.name not in names]
        if missing:
            raise OpenVINOUnavailableError(f"{self.path}: the compiled model has no output {missing} (it has {sorted(names)}); "
                                           "rebuild the engine directory with `python export/build_engines.py --force`")  # fmt: skip
        logger.debug("%s: OpenVINO %s %s (%s)", self.spec.name, ov.__version__, self.precision.value, "cached" if hit else "compiled")
        return compiled.create_infer_request(), compile_for, hit

    def _compiled(self, ov: ModuleType, core: Any, model: Path | Any, config: dict[str, Any], key: Path | None) -> tuple[Any, bool]:
        try:
            return compile_cached(core, model, config, self.cache_root, key, lora_sets=self.lora_cache_sets)
        except RuntimeError as exc:  # OpenVINO's frontend or CPU plugin: one line, naming the component and the file
            raise OpenVINOUnavailableError(f"{self.spec.name}: OpenVINO {ov.__version__} could not compile {self.path}: {first_line(exc, with_type=False)}; "
                                           "use another backend or rebuild the engine directory") from exc  # fmt: skip

    def close(self) -> None:
        self.request = None
        self._static.clear()
        self._compile = None
        super().close()

    def _parts(self, batch: int) -> int:
        """How many parts a call of this batch is split into: ``streams`` where they come out whole units, else 1."""
        return self.streams if self.streams > 1 and batch % (self.streams * self.batch_unit) == 0 else 1

    def _requests_for(self, inputs: Mapping[str, np.ndarray]) -> list[Any]:
        """The static-shape model's requests for these shapes, one per part (compiled at their first call while fewer
        than ``static_shapes`` are held), else the dynamic model's one request."""
        shapes = tuple(tuple(int(d) for d in inputs[t.name].shape) for t in self.spec.inputs)
        requests = self._static.get(shapes)
        if requests is None and len(self._static) < self.static_shapes:
            self.request = None  # the dynamic model's weights go back first (compiled again if a shape beyond these comes):
            start = time.perf_counter()  # holding both set the peak (SD-1.5 at 256 px: 12.2 GiB; 10.0 letting go first)
            parts = self._parts(shapes[0][0])
            compiled = self._compile(tuple((shape[0] // parts, *shape[1:]) for shape in shapes), parts)
            requests = self._static[shapes] = [compiled.create_infer_request() for _ in range(parts)]
            logger.debug("%s: OpenVINO model for shapes %s (%d part(s)) ready (%.2f s)", self.spec.name, shapes, parts, time.perf_counter() - start)
        if requests is None:
            if self.request is None:
                self.request = self._compile(None).create_infer_request()
            requests = [self.request]
        return requests

    def _infer(self, feed: Mapping[str, Array]) -> dict[str, Array]:
        # Inputs are shared for the (synchronous) call; outputs are copied, since the requests reuse their buffers.
        inputs = {t.name: np.ascontiguousarray(feed[t.name]) for t in self.spec.inputs}
        requests = self._requests_for(inputs)
        if len(requests) == 1:
            results = requests[0].infer(inputs, share_inputs=True)
            return {t.name: results[t.name] for t in self.spec.outputs}
        part = len(next(iter(inputs.values()))) // len(requests)  # every input's first dim is the batch (runtime.specs)
        for i, request in enumerate(requests):
            request.start_async({k: v[i * part:(i + 1) * part] for k, v in inputs.items()}, share_inputs=True)
        for request in requests:
            request.wait()
        return {t.name: np.concatenate([r.get_tensor(t.name).data for r in requests]) for t in self.spec.outputs}

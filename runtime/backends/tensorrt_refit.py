"""LoRAs on TensorRT plans by refitting (runtime/lora.py computes the weights; this module hands them to TensorRT).

Written against TensorRT 10's documented refit API and NOT RUN: TensorRT cannot be installed where this package is
developed. A plan built with ``--tensorrt-refit`` (``BuilderFlag.REFIT``, recorded as ``"refittable": true`` in the
manifest's plan entry) keeps its weights refittable; TensorRT's ONNX parser names them by their ONNX initializer names
(``INetworkDefinition.set_weights_name``), which are the names the weight map records. A switch:

1. the named weights to hand over (:func:`refit_weights`): every initializer the new LoRAs change (base + delta,
   computed from the artifact's base, as on every backend), and every one a previous LoRA changed that the new ones do
   not, back at its base value read from the artifact — so nothing accumulates and removal restores the base;
2. a fresh ``trt.Refitter`` for the engine; a name it does not list (``get_all_weights``) or a value it rejects
   (``set_named_weights`` false: another count) is refused; weights TensorRT combined with the given ones
   (``get_missing_weights``: e.g. q, k and v fused into one GEMM) are supplied at their base values where the weight map
   locates them, else refused naming them (:func:`stage_refit`); nothing has touched the engine yet;
3. the commit: ``refit_cuda_engine()`` once the runner's stream is idle, and captured CUDA graphs are dropped
   (captured again at their next calls). A refit TensorRT fails after step 2 accepted everything leaves the engine's
   weights unknown: the runner closes and says so.

A plan built without ``--tensorrt-refit`` is refused before anything is computed on the GPU.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import numpy as np

from runtime.errors import RunnerError

REBUILD_REFIT = "rebuild it with `python export/build_engines.py --backend tensorrt --tensorrt-refit`, or use the onnxruntime-cuda backend"


def refit_weights(previous: Iterable[str], new: Mapping[str, np.ndarray], base: Callable[[Iterable[str]], Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The named weights a switch hands to the refitter: ``new`` (initializer -> value as stored, the base + the new
    LoRAs' deltas) and, for every name in ``previous`` (changed by the LoRAs in use) not in ``new``, its base value
    (``base(names)``: initializer -> value read from the artifact)."""
    restore = sorted(set(previous) - set(new))
    out = {name: np.ascontiguousarray(value) for name, value in new.items()}
    if restore:
        values = base(restore)
        missing = [n for n in restore if n not in values]
        if missing:
            raise RunnerError(f"TensorRT refit: no base value for the initializer(s) {missing[:3]} a LoRA changed: cannot restore them")
        out.update({name: np.ascontiguousarray(values[name]) for name in restore})
    return out


def stage_refit(trt: Any, engine: Any, logger: Any, weights: Mapping[str, np.ndarray], base: Callable[[Iterable[str]], Mapping[str, np.ndarray]],
                where: str) -> tuple[Any, dict[str, np.ndarray]]:  # fmt: skip
    """A ``trt.Refitter`` for ``engine`` holding ``weights`` (and the base values of the weights TensorRT reports
    missing), checked but not yet applied; returns it with every array it holds (they must outlive the refit).
    ``where`` names the plan in errors."""
    refitter = trt.Refitter(engine, logger)
    known = set(refitter.get_all_weights())
    unknown = sorted(set(weights) - known)
    if unknown:
        raise RunnerError(f"{where}: the plan has no refittable weight named {unknown[:3]} (of {len(unknown)}) that a LoRA changes "
                          f"(it lists {len(known)}); {REBUILD_REFIT}")  # fmt: skip
    held = dict(weights)
    _set(trt, refitter, held, where)
    missing = sorted(refitter.get_missing_weights())
    if missing:
        values = base(missing)
        unlocated = [n for n in missing if n not in values]
        if unlocated:
            raise RunnerError(f"{where}: TensorRT needs the weight(s) {unlocated[:3]} refitted with the LoRA'd ones (combined when the plan "
                              "was built), and the weight map does not locate them; use the onnxruntime-cuda backend")  # fmt: skip
        extra = {name: np.ascontiguousarray(values[name]) for name in missing}
        _set(trt, refitter, extra, where)
        held.update(extra)
        still = sorted(refitter.get_missing_weights())
        if still:
            raise RunnerError(f"{where}: TensorRT still reports missing weights {still[:3]} after the base values were supplied")
    return refitter, held


def _set(trt: Any, refitter: Any, weights: Mapping[str, np.ndarray], where: str) -> None:
    for name, value in weights.items():
        if not refitter.set_named_weights(name, trt.Weights(value)):
            raise RunnerError(f"{where}: TensorRT rejected the weight {name!r} ({value.dtype} {value.shape}): another count or type than "
                              "the plan's (see TensorRT's log)")  # fmt: skip


def apply_refit(refitter: Any, where: str) -> None:
    """``refit_cuda_engine()``, synchronous; raises when TensorRT reports failure."""
    if not refitter.refit_cuda_engine():
        raise RunnerError(f"{where}: TensorRT's refit_cuda_engine failed after the weights were accepted (see TensorRT's log); the engine's "
                          "weights are unknown, so the runner was closed: load the Generator again")  # fmt: skip

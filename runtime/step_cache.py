"""Which steps of a sampling run compute the whole UNet under step caching (DeepCache, Ma et al. 2023, arXiv
2312.00858; issue 34). Torch-free: the reference and every runtime backend follow the same plan.

A *full* step runs the whole UNet and keeps the deep feature at the split (a skip branch:
:mod:`contextdiff_ref.models.step_cache`); the steps after it, up to the next full step, run only the outer (shallow)
layers on that cached feature. Step 0 is always full: nothing is
cached before it. The adapter runs on every step's x̂_0 either way (method doc §5 is unchanged).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from runtime.errors import ContextDiffError, InvalidArgumentError

DEFAULT_BRANCH = 1  # the skip branch the UNet is split at: DeepCache's for Stable Diffusion 1.5 (cache_layer_id=0, cache_block_id=0)
LORA_ON_UNET = "cache_interval=1 while LoRAs change the UNet (they do not reach the shallow UNet's graph yet)"


def full_step_plan(num_inference_steps: int, cache_interval: int = 1, full_steps: Sequence[int] | None = None) -> tuple[bool, ...]:
    """For each of the run's ``num_inference_steps`` steps (in the order they run), whether it is a full step.

    ``cache_interval`` k: steps 0, k, 2k, ... are full (k = 1: every step, today's exact path). ``full_steps``
    instead lists the full steps explicitly (strictly increasing, starting with 0, each below the number of steps)."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, numbers.Integral) or num_inference_steps < 1:
        raise InvalidArgumentError("num_inference_steps", num_inference_steps, "an integer >= 1")
    if full_steps is not None:
        steps = list(full_steps)
        if cache_interval != 1:
            raise InvalidArgumentError("cache_interval", cache_interval, "1 (the default) when full_steps lists the full steps")
        if not steps or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) for s in steps):
            raise InvalidArgumentError("full_steps", full_steps, "a non-empty list of integer step indices")
        if steps[0] != 0:
            raise InvalidArgumentError("full_steps", full_steps, "a list that starts with step 0 (nothing is cached before the first step)")
        if any(b <= a for a, b in zip(steps, steps[1:])) or steps[-1] >= num_inference_steps:
            raise InvalidArgumentError("full_steps", full_steps, f"strictly increasing step indices below num_inference_steps={num_inference_steps}")
        chosen = set(steps)
        return tuple(i in chosen for i in range(num_inference_steps))
    k = validate_cache_interval(cache_interval)
    return tuple(i % k == 0 for i in range(num_inference_steps))


def validate_cache_interval(cache_interval: Any) -> int:
    """``cache_interval``: an integer >= 1 (a request's, :func:`runtime.validation.validate_request`; a plan's)."""
    if isinstance(cache_interval, bool) or not isinstance(cache_interval, numbers.Integral) or cache_interval < 1:
        raise InvalidArgumentError("cache_interval", cache_interval, "an integer >= 1 (1: every step runs the whole UNet)")
    return int(cache_interval)


def no_step_cache(where: str) -> str:
    """What a directory built without step caching's graphs (``where``) allows, and how to build one that caches."""
    return (f"every step full (cache_interval=1) for {where}: it was built without step caching's graphs; "
            "rebuild it with `python export/build_engines.py --step-cache`")  # fmt: skip


def check_step_cache(full: Sequence[bool], *, can_cache: bool, where: str, lora_on_unet: bool = False, name: str = "cache_interval/full_steps",
                     value: Any = None) -> None:  # fmt: skip
    """Refuse a plan with shallow steps where they cannot run: an engine directory (``where``) built without the
    shallow UNet (``can_cache`` False), or LoRAs on the UNet (they do not reach the shallow graph yet). ``name`` and
    ``value``: the argument the error names (the one that asked for the plan) and its value (None: the cached steps)."""
    if all(full):
        return
    shown = f"{sum(not f for f in full)} cached step(s)" if value is None else value
    if not can_cache:
        raise InvalidArgumentError(name, shown, no_step_cache(where))
    if lora_on_unet:
        raise InvalidArgumentError(name, f"{shown} with LoRAs on the UNet", LORA_ON_UNET)


def cached_unet(unet: Any, shallow: Any, full: Sequence[bool]) -> Callable[[Mapping[str, Any]], Any]:
    """``infer(feed) -> model_output`` for one run over the runners ``unet`` and ``shallow`` (runtime.backends):
    call i runs the whole UNet where ``full[i]`` and keeps its ``feature`` output, else the shallow UNet on the
    feature of the last full step. With every step full it is the UNet's own call (``shallow`` may be None)."""
    if all(full):
        return lambda feed: unet.infer(feed)["model_output"]
    state: dict[str, Any] = {"step": 0, "feature": None}

    def infer(feed: Mapping[str, Any]) -> Any:
        step = state["step"]
        if step >= len(full):
            raise ContextDiffError(f"step caching planned {len(full)} steps; the loop asked for step {step + 1}")
        state["step"] = step + 1
        if full[step]:
            out = unet.infer(feed)
            state["feature"] = out["feature"]  # the runner's array: kept until the next full step replaces it
            return out["model_output"]
        return shallow.infer({**feed, "feature": state["feature"]})["model_output"]

    return infer

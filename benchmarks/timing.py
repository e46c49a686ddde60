"""Per-stage timing for the latency benchmark: text encoding, UNet and adapter calls, whole steps, decoding.

Stages are timed by wrapping the callables each system already calls (runners, module forwards, pipeline stages),
so the measured code is the shipped code. A step's "loop overhead" is its wall time minus its engine calls.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from typing import Any, Callable

import numpy as np
import torch

STAGE_OF_COMPONENT = {"text_encoder": "text_encoder", "unet": "unet", "unet_shallow": "unet", "adapter": "adapter", "vae_decoder": "decode",
                      "vae_encoder": "encode"}  # a step-caching step calls the whole UNet or its shallow part: both are the UNet stage


class Timer:
    """``sync_cuda``: synchronise the device around every timed stage (what per-stage GPU times need, and what would
    distort an end-to-end time); ``active=False`` makes every wrapper a plain call and records nothing."""

    def __init__(self, sync_cuda: bool = False) -> None:
        self.sync_cuda = sync_cuda
        self.active = True
        self.reset()

    def reset(self) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)
        self._last: float | None = None

    def now(self) -> float:
        if self.sync_cuda and self.active:
            torch.cuda.synchronize()
        return time.perf_counter()

    def record(self, stage: str, seconds: float) -> None:
        if self.active:
            self.samples[stage].append(seconds)

    def wrap(self, stage: str, fn: Callable[..., Any], *, starts_loop: bool = False) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return fn(*args, **kwargs)
            start = self.now()
            out = fn(*args, **kwargs)
            end = self.now()
            self.samples[stage].append(end - start)
            if starts_loop:
                self._last = end
            return out

        return timed

    def on_step(self, _step_output: Any) -> None:
        """Per-step callback: the time since the previous step ended (or since text encoding ended)."""
        if not self.active:
            return
        now = self.now()
        if self._last is not None:
            self.samples["step"].append(now - self._last)
        self._last = now

    def calls_per_step(self, stage: str) -> float:
        steps = len(self.samples.get("step", []))
        return len(self.samples.get(stage, [])) / steps if steps else 0.0


class _TimedRunner:
    def __init__(self, runner: Any, timer: Timer, stage: str) -> None:
        self.runner, self.spec = runner, runner.spec
        self.infer = timer.wrap(stage, runner.infer)

    def activate(self) -> None:
        self.runner.activate()

    def close(self) -> None:
        self.runner.close()


def instrument_generator(gen: Any, timer: Timer) -> None:
    for component, runner in list(gen.runners.items()):
        gen.runners[component] = _TimedRunner(runner, timer, STAGE_OF_COMPONENT[component.value])
    gen.encode_prompt = timer.wrap("text", gen.encode_prompt, starts_loop=True)
    _with_step_callback(gen, timer)


def instrument_pipeline(pipe: Any, timer: Timer) -> None:
    for name in ("unet", "adapter"):
        module = getattr(pipe.components, name)
        module.forward = timer.wrap(name, module.forward)
    if pipe.components.vae is not None:
        pipe.components.vae.decode = timer.wrap("decode", pipe.components.vae.decode)
    pipe.encode_prompt = timer.wrap("text", pipe.encode_prompt, starts_loop=True)
    _with_step_callback(pipe, timer)


def _with_step_callback(obj: Any, timer: Timer) -> None:
    call = obj.__call__

    def timed_call(*args: Any, **kwargs: Any) -> Any:
        return call(*args, **{**kwargs, "callback": timer.on_step})

    obj.run_timed = timed_call


def diffusers_ddim(pipe: Any, prompts: list[str], steps: int, guidance: float, timer: Timer) -> np.ndarray:
    """What plain Stable Diffusion costs: diffusers' DDIMScheduler loop with the pipeline's text encoder, UNet and VAE,
    classifier-free guidance on the doubled batch, no adapter. Calls the modules' own forwards (not the reference's
    timed wrappers)."""
    from diffusers import DDIMScheduler

    from contextdiff_ref.models.coordinates import unet_forward
    from contextdiff_ref.models.text import tokenize
    from runtime.images import to_images
    from runtime.noise import draw_noise

    c = pipe.components
    scheduler = DDIMScheduler.from_config(c.scheduler_config.to_dict())
    scheduler.set_timesteps(steps)
    n, f = len(prompts), pipe.limits.vae_scale_factor
    with torch.inference_mode():
        start = timer.now()
        ids = tokenize(c, [""] * n + prompts).to(pipe.device)
        text = c.text_encoder(ids)[0]
        timer.record("text", timer.now() - start)
        shape = (n, pipe.limits.sample_channels, pipe.limits.default_height // f, pipe.limits.default_width // f)
        x = torch.from_numpy(draw_noise(0, shape, steps, 0.0)[0]).to(pipe.device, pipe.dtype)
        bare_unet = functools.partial(type(c.unet).forward, c.unet)
        for t in scheduler.timesteps:
            step_start = timer.now()
            uncond, cond = unet_forward(bare_unet, torch.cat([x, x]), t, text, coordinates=c.unet_coordinate_channels).chunk(2)
            timer.record("unet", timer.now() - step_start)
            x = scheduler.step(uncond + guidance * (cond - uncond), t, x).prev_sample
            timer.record("step", timer.now() - step_start)
        start = timer.now()
        if c.vae is not None:
            x = type(c.vae).decode(c.vae, x / c.vae.config.scaling_factor).sample
        images = to_images(x.float().cpu().numpy(), "np")
        timer.record("decode", timer.now() - start)
    return images

"""runtime.Generator: contextual DDIM around the engines of an engine directory, with no torch.

``Generator.__call__`` is five named stages — validate, encode text, draw noise, sample (runtime.sampling, the
same loop the reference runs), decode — with the same signature and semantics as ``ContextDiffPipeline``.
One call runs at a time per Generator (an internal lock serialises concurrent callers), so results never depend
on threading.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any, Callable, Sequence

import numpy as np
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from runtime.errors import InvalidArgumentError
from runtime.images import GenerationOutput, to_images
from runtime.manifest import EngineManifest, load_manifest
from runtime.noise import draw_noise
from runtime.runners import OnnxRuntimeRunner, Runner
from runtime.sampling import StepOutput, sample
from runtime.schedule import Schedule, SchedulerConfig
from runtime.specs import SPECS, Component, batch_range
from runtime.validation import GenerationRequest, validate_request

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime")  # this version runs ONNX Runtime on the CPU; GPU runners are not written yet


def _pick_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise InvalidArgumentError("backend", backend, f"one of {', '.join(map(repr, BACKENDS))} (TensorRT, CUDA and Torch runners are not in this version)")
    return "onnxruntime-cpu"


class Generator:
    """Text-to-image generation from an engine directory.

    >>> gen = Generator.from_dir("engines/tiny-pixel-seed0")
    >>> gen("a red circle at the top left", seed=0).images  # float32 (1, H, W, 3) in [0, 1]
    """

    def __init__(self, manifest: EngineManifest, runners: dict[Component, Runner], backend: str) -> None:
        self.manifest, self.runners, self.backend = manifest, runners, backend
        self.schedule = Schedule(SchedulerConfig.from_dict(json.loads(manifest.scheduler_path.read_text(encoding="utf-8"))))
        self.tokenizer = Tokenizer.from_file(str(manifest.tokenizer_path))
        self.limits = manifest.limits
        self._lock = threading.Lock()
        for runner in runners.values():
            runner.activate()

    @classmethod
    def from_dir(cls, engine_dir: str | os.PathLike[str], backend: str = "auto", device: int | None = None) -> Generator:
        """Validate ``engine_dir`` (format version, sha256 of every artifact) and load its engines.

        ``device``: reserved for GPU runners; only None (the CPU) is accepted in this version."""
        chosen = _pick_backend(backend)
        if device is not None:
            raise InvalidArgumentError("device", device, "None: this version runs on the CPU")
        manifest = load_manifest(engine_dir)
        runners = {c: OnnxRuntimeRunner(SPECS[c], a.onnx) for c, a in manifest.components.items()}
        logger.info("Generator: %s backend for %s", chosen, engine_dir)
        return cls(manifest, runners, chosen)

    def close(self) -> None:
        for runner in self.runners.values():
            runner.close()

    # -- stages ----------------------------------------------------------------------------------------
    def _check_profiles(self, request: GenerationRequest) -> None:
        """Every engine must accept this call's batch and size (its build profile)."""
        f = self.limits.vae_scale_factor
        h, w, n = request.height // f, request.width // f, request.batch_size
        for component, artifacts in self.manifest.components.items():
            batch = {Component.VAE_DECODER: n, Component.ADAPTER: 2 * n}.get(component, 2 * n if request.do_guidance else n)
            if not artifacts.profile.contains(batch, h, w):
                lo, hi = artifacts.profile.min, artifacts.profile.max
                most = hi[0] // (batch_range(component, 1)[1])
                raise InvalidArgumentError(
                    "prompt/height/width", f"{n} image(s) of {request.height}x{request.width}",
                    f"what the engines in {self.manifest.root} were built for: up to {most} image(s), sample sizes {lo[1]}x{lo[2]} to "
                    f"{hi[1]}x{hi[2]} (x{f} pixels); rebuild with `python export/build_engines.py --batch/--height/--width/--dynamic-size`",
                )  # fmt: skip

    def encode_prompt(self, prompts: Sequence[str]) -> np.ndarray:
        """Prompts -> text states (N, L, D) float32; longer prompts are truncated with a warning."""
        encodings = self.tokenizer.encode_batch(list(prompts))
        for prompt, encoding in zip(prompts, encodings):
            if encoding.overflowing:
                logger.warning("prompt truncated to the tokenizer's %d tokens: %r", len(encoding.ids), prompt)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        return self.runners[Component.TEXT_ENCODER].infer({"input_ids": ids})["text_states"]

    def _denoiser(self, text: np.ndarray, request: GenerationRequest) -> Callable[[np.ndarray, int], np.ndarray]:
        unet, w, n = self.runners[Component.UNET], request.guidance_scale, request.batch_size
        copies = 2 if request.do_guidance else 1
        model_input = None
        timestep = np.empty((copies * n,), dtype=np.int64)

        def denoise(x: np.ndarray, t: int) -> np.ndarray:  # method doc §5 step 1
            nonlocal model_input
            if model_input is None:
                model_input = np.empty((copies * n, *x.shape[1:]), dtype=np.float32)  # allocated once per call
            for i in range(copies):
                model_input[i * n : (i + 1) * n] = x
            timestep.fill(t)
            out = unet.infer({"sample": model_input, "timestep": timestep, "encoder_hidden_states": text})["model_output"]
            if copies == 1:
                return out
            uncond, cond = out[:n], out[n:]
            return uncond + w * (cond - uncond)

        return denoise

    def _context_shift(self, cond_text: np.ndarray) -> Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]]:
        adapter, n = self.runners[Component.ADAPTER], cond_text.shape[0]
        text2 = np.concatenate([cond_text, cond_text])
        x2 = None
        timesteps = np.empty((2 * n,), dtype=np.int64)

        def shift(x0: np.ndarray, t: int, s: int) -> tuple[np.ndarray, np.ndarray]:  # method doc §5 step 3
            nonlocal x2
            if x2 is None:
                x2 = np.empty((2 * n, *x0.shape[1:]), dtype=np.float32)
            x2[:n], x2[n:] = x0, x0
            timesteps[:n], timesteps[n:] = t, s
            r = adapter.infer({"sample": x2, "encoder_hidden_states": text2, "timestep": timesteps})["shift"]
            return r[:n], r[n:]

        return shift

    def decode(self, x0: np.ndarray, output_type: str) -> Any:
        if output_type == "latent":
            return np.asarray(x0, dtype=np.float32)
        if Component.VAE_DECODER in self.runners:
            x0 = self.runners[Component.VAE_DECODER].infer({"latent": np.ascontiguousarray(x0, dtype=np.float32)})["image"]
        return to_images(x0, output_type)

    # -- the call --------------------------------------------------------------------------------------
    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float | None = None,
        eta: float = 0.0,
        seed: int | None = None,
        latents: np.ndarray | None = None,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "np",
        callback: Callable[[StepOutput], Any] | None = None,
        *,
        progress: bool = True,
    ) -> GenerationOutput:
        """Same arguments and results as ``ContextDiffPipeline.__call__`` (NumPy arrays in the callback)."""
        request = validate_request(
            self.limits, prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, eta=eta, seed=seed, latents=latents, height=height, width=width,
            output_type=output_type, callback=callback,
        )  # fmt: skip
        self._check_profiles(request)
        with self._lock:
            text = self.encode_prompt(request.negative_prompts + request.prompts if request.do_guidance else request.prompts)
            cond_text = text[request.batch_size :] if request.do_guidance else text
            f = self.limits.vae_scale_factor
            shape = (request.batch_size, self.limits.sample_channels, request.height // f, request.width // f)
            initial, step_noise = draw_noise(request.seed, shape, request.num_inference_steps, request.eta)
            x0 = sample(
                self._denoiser(text, request), self._context_shift(cond_text),
                initial if request.latents is None else request.latents.copy(), self.schedule.plan(request.num_inference_steps, request.eta),
                step_noise=step_noise, callback=request.callback,
                progress=lambda steps: tqdm(steps, desc="contextual DDIM", disable=not progress, leave=False),
            )  # fmt: skip
            return GenerationOutput(images=self.decode(x0, request.output_type), seed=request.seed)

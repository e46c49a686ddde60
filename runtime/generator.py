"""runtime.Generator: contextual DDIM around the engines of an engine directory, with no torch.

``Generator.__call__`` is five named stages — validate, encode text, draw noise, sample (runtime.sampling, the
same loop the reference runs), decode — with the same signature and semantics as ``ContextDiffPipeline``.
One call runs at a time per Generator (an internal lock serialises concurrent callers), so results never depend
on threading.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from typing import Any, Callable, Sequence

import numpy as np
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from runtime.backends.base import Runner
from runtime.backends.selection import check_device, load_backend
from runtime.errors import InvalidArgumentError
from runtime.images import GenerationOutput, to_images
from runtime.lora import LoraSpec, lora_weights, parse_loras
from runtime.manifest import EngineManifest, load_manifest
from runtime.options import OpenVINOPrecision
from runtime.sampling import LocalBlend, StepOutput, contextual_forward, generate, invert
from runtime.schedule import Schedule, SchedulerConfig
from runtime.specs import SPECS, Component, batch_range
from runtime.step_cache import cached_unet, check_step_cache, full_step_plan
from runtime.validation import GenerationRequest, check_strength, merge_requests, validate_inversion, validate_request

logger = logging.getLogger(__name__)

def _check_int8_loras(specs: Sequence[LoraSpec], precision: OpenVINOPrecision | None) -> None:
    """LoRAs change float weights; the int8 IR holds quantized ones (a LoRA would have to be applied before calibration)."""
    if specs and precision is OpenVINOPrecision.INT8:
        raise InvalidArgumentError("loras", [str(s.path) for s in specs],
                                   "no LoRAs with OpenVINO int8 (its IR holds quantized weights): use precision 'f32' or 'bf16' for LoRAs")  # fmt: skip


class Generator:
    """Text-to-image generation from an engine directory.

    >>> gen = Generator.from_dir("engines/shapes-contextdiff")
    >>> gen("a red circle at the top left", seed=0).images  # float32 (1, H, W, 3) in [0, 1]
    """

    loras: tuple[LoraSpec, ...] = ()  # the LoRAs in use (set_loras)
    _lora_components: frozenset[Component] = frozenset()  # the components whose weights they change
    _lora_weights: dict[Component, Any] = {}  # their weights (runtime.lora.ComponentWeights), what a failed switch goes back to
    module_shapes: dict[Component, dict[str, tuple[int, ...]]] | None = None  # backends running the modules (Torch): their weights' shapes

    def __init__(self, manifest: EngineManifest, runners: dict[Component, Runner], backend: str, xp: Any = np, device_id: int = 0,
                 precision: str | None = None) -> None:  # fmt: skip
        """``runners``: one per component of the manifest; ``xp``: the array module the runners exchange (NumPy, or
        CuPy for GPU runners) — buffers live there, and nothing crosses host and device inside the loop.
        ``device_id``: with CuPy, the CUDA device made current (on the calling thread) for loading and for every call."""
        self.manifest, self.runners, self.backend, self.xp, self.device_id = manifest, runners, backend, xp, device_id
        self.precision = precision  # the openvino backend's inference precision ("f32"/"bf16"); None for the others
        self.schedule = Schedule(SchedulerConfig.from_dict(json.loads(manifest.scheduler_path.read_text(encoding="utf-8"))))
        self.tokenizer = Tokenizer.from_file(str(manifest.tokenizer_path))
        self.limits = manifest.limits
        self._lock = threading.Lock()
        with self._on_device():
            for runner in runners.values():
                runner.activate()

    def _on_device(self) -> contextlib.AbstractContextManager[Any]:
        """CuPy's current device is per thread: every thread that loads or calls gets the Generator's device."""
        return self.xp.cuda.Device(self.device_id) if self.xp is not np else contextlib.nullcontext()

    @classmethod
    def from_dir(cls, engine_dir: str | os.PathLike[str], backend: str = "auto", device: int | None = None,
                 precision: str | OpenVINOPrecision | None = None, *, loras: Sequence[Any] = (), ignore_unmatched: bool = False) -> Generator:  # fmt: skip
        """Validate ``engine_dir`` (format version, sha256 of every artifact; for TensorRT plans the TensorRT version
        and GPU compute capability) before loading anything, then load its engines.

        ``backend``: "auto" (TensorRT, then ONNX Runtime CUDA; on the CPU OpenVINO where bf16 is wanted and the CPU
        has it, else ONNX Runtime CPU; the choice is logged), "tensorrt", "onnxruntime", "onnxruntime-cuda",
        "onnxruntime-cpu" or "openvino". ``device``: CUDA device index (GPU backends). ``precision``: OpenVINO's
        inference precision, "f32" or "bf16" (None: what the engine directory records, else f32); only the openvino
        backend takes one, and bf16 on a CPU without bf16 instructions is refused, never run at f32. ``loras``:
        [(file, scale), ...] applied at load, no rebuild (:meth:`set_loras`).
        """
        check_device(device)
        manifest = load_manifest(engine_dir)
        if manifest.num_frames is not None:
            raise InvalidArgumentError("engine_dir", str(engine_dir), f"an image model's engine directory: this one is a video model's "
                                       f"({manifest.num_frames} frames); edit videos with runtime.VideoEditor.from_dir")  # fmt: skip
        return cls.load(manifest, backend, device, precision, loras=loras, ignore_unmatched=ignore_unmatched)

    @classmethod
    def load(cls, manifest: EngineManifest, backend: str = "auto", device: int | None = None,
             precision: str | OpenVINOPrecision | None = None, *, loras: Sequence[Any] = (), ignore_unmatched: bool = False) -> Generator:  # fmt: skip
        """:meth:`from_dir` for a loaded, validated manifest, of an image model or (frames folded into the batch, as
        ``runtime.VideoEditor`` runs it) of a video model."""
        specs = parse_loras(loras)
        chosen = load_backend(manifest, backend, device, precision)
        _check_int8_loras(specs, chosen.precision)
        weights = lora_weights(manifest, specs, chosen.name, ignore_unmatched=ignore_unmatched)
        for component, changed in weights.items():  # before activation: the sessions are made once, with them
            chosen.runners[component].prepare_weights(changed)()
        logger.info("Generator: %s backend%s for %s", chosen.name, f" ({chosen.precision.value})" if chosen.precision else "", manifest.root)
        generator = cls(manifest, chosen.runners, chosen.name, xp=chosen.xp, device_id=chosen.device_id,
                        precision=chosen.precision.value if chosen.precision else None)  # fmt: skip
        generator.loras, generator._lora_components, generator._lora_weights = specs, frozenset(weights), weights
        return generator

    def set_loras(self, loras: Sequence[Any] = (), *, ignore_unmatched: bool = False) -> None:
        """Use ``loras`` ([(file, scale), ...]; empty: none, the base weights) instead of the current ones. The new
        weights are computed from the base weights and every touched engine is reloaded with them before any is
        switched: on an error the Generator keeps its previous weights, never half of each."""
        specs = parse_loras(loras)
        _check_int8_loras(specs, OpenVINOPrecision(self.precision) if self.precision else None)
        with self._lock, self._on_device():
            weights = lora_weights(self.manifest, specs, self.backend, ignore_unmatched=ignore_unmatched, module_shapes=self.module_shapes)
            commits = [(c, self.runners[c].prepare_weights(weights.get(c))) for c in sorted(self._lora_components | set(weights))]
            done: list[Component] = []
            try:
                for component, commit in commits:  # a failing one is back on its previous weights; put the others back too
                    commit()
                    done.append(component)
            except Exception:
                for component in done:
                    self.runners[component].prepare_weights(self._lora_weights.get(component))()
                raise
            self.loras, self._lora_components, self._lora_weights = specs, frozenset(weights), weights

    def close(self) -> None:
        for runner in self.runners.values():
            runner.close()

    # -- stages ----------------------------------------------------------------------------------------
    def _check_profiles(self, request: GenerationRequest) -> None:
        """Every engine must accept this call's batch, and the spatial ones its size (their build profiles; the text
        encoder's profile holds no image size)."""
        f = self.limits.vae_scale_factor
        h, w, n = request.height // f, request.width // f, request.batch_size
        for component, artifacts in self.manifest.components.items():
            batch = {Component.VAE_DECODER: n, Component.VAE_ENCODER: n, Component.ADAPTER: 2 * n}.get(component, 2 * n if request.do_guidance else n)
            profile = artifacts.profile
            if not (profile.contains(batch, h, w) if SPECS[component].spatial else profile.min[0] <= batch <= profile.max[0]):
                lo, hi = self.manifest.components[Component.UNET].profile.min, self.manifest.components[Component.UNET].profile.max
                raise InvalidArgumentError(
                    "prompt/height/width", f"{n} image(s) of {request.height}x{request.width}",
                    f"what the engines in {self.manifest.root} were built for: up to {self.max_images} image(s), sample sizes {lo[1]}x{lo[2]} "
                    f"to {hi[1]}x{hi[2]} (x{f} pixels); rebuild with `python export/build_engines.py --batch/--height/--width/--dynamic-size`",
                )  # fmt: skip

    def encode_prompt(self, prompts: Sequence[str]) -> np.ndarray:
        """Prompts -> text states (N, L, D) float32; longer prompts are truncated with a warning."""
        encodings = self.tokenizer.encode_batch(list(prompts))
        for prompt, encoding in zip(prompts, encodings):
            if encoding.overflowing:
                logger.warning("prompt truncated to the tokenizer's %d tokens: %r", len(encoding.ids), prompt)
        ids = self.xp.asarray(np.array([e.ids for e in encodings], dtype=np.int64))  # one upload per call
        return self.runners[Component.TEXT_ENCODER].infer({"input_ids": ids})["text_states"]

    def _denoiser(self, text: np.ndarray, request: GenerationRequest, full: Sequence[bool] = ()) -> Callable[[np.ndarray, int], np.ndarray]:
        """``full``: step caching's plan, one flag per step run (runtime.step_cache); empty: every step full."""
        unet = cached_unet(self.runners[Component.UNET], self.runners.get(Component.UNET_SHALLOW), full)
        w, n, xp = request.guidance_scale, request.batch_size, self.xp
        copies = 2 if request.do_guidance else 1
        model_input = None
        timestep = xp.empty((copies * n,), dtype=xp.int64)

        def denoise(x: np.ndarray, t: int) -> np.ndarray:  # method doc §5 step 1
            nonlocal model_input
            if model_input is None:
                model_input = xp.empty((copies * n, *x.shape[1:]), dtype=xp.float32)  # allocated once per call
            for i in range(copies):
                model_input[i * n : (i + 1) * n] = x
            timestep.fill(t)
            out = unet({"sample": model_input, "timestep": timestep, "encoder_hidden_states": text})
            if copies == 1:
                return out
            uncond, cond = out[:n], out[n:]
            return uncond + w * (cond - uncond)

        return denoise

    def _context_shift(self, text: np.ndarray) -> Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]]:
        """Method doc §5 step 3 for text states of k·N rows: one adapter call of batch 2·k·N (r_t and r_s stacked), or
        one per text where the engine's profile is smaller (engines built before the "guided" variant existed)."""
        adapter, m, xp = self.runners[Component.ADAPTER], text.shape[0], self.xp
        buffers: dict[str, Any] = {}

        def shift(x0: np.ndarray, t: int, s: int) -> tuple[np.ndarray, np.ndarray]:
            n = x0.shape[0]
            calls = 1 if 2 * m <= self.manifest.components[Component.ADAPTER].profile.max[0] else m // n
            rows = m // calls  # text rows per call
            if not buffers:  # allocated once per generation call
                buffers["x"] = xp.empty((2 * rows, *x0.shape[1:]), dtype=xp.float32)
                buffers["t"] = xp.empty((2 * rows,), dtype=xp.int64)
                buffers["text"] = [xp.concatenate([text[k * rows : (k + 1) * rows]] * 2) for k in range(calls)]
            x2, timesteps = buffers["x"], buffers["t"]
            for j in range(2 * rows // n):
                x2[j * n : (j + 1) * n] = x0
            timesteps[:rows], timesteps[rows:] = t, s
            outs = [adapter.infer({"sample": x2, "encoder_hidden_states": part, "timestep": timesteps})["shift"] for part in buffers["text"]]
            if calls == 1:
                return outs[0][:rows], outs[0][rows:]
            return xp.concatenate([r[:rows] for r in outs]), xp.concatenate([r[rows:] for r in outs])

        return shift

    def encode(self, images: np.ndarray) -> Any:
        """Images (N, H, W, 3) float32 in [0, 1] -> x_0 (N, C, h, w) float32 on the runners' device, in the model's
        sample space (pixels scaled to [-1, 1], or the VAE encoder's latents): ``ContextDiffPipeline.encode``."""
        x = self.xp.asarray(np.ascontiguousarray(np.asarray(images, dtype=np.float32).transpose(0, 3, 1, 2))) * np.float32(2.0) - np.float32(1.0)
        if self.limits.vae_scale_factor == 1:
            return x
        if Component.VAE_ENCODER not in self.runners:
            raise InvalidArgumentError("engine_dir", str(self.manifest.root), "an engine directory with a VAE encoder, which editing an image of a "
                                       "latent model needs: rebuild it with `python export/build_engines.py --model MODEL_DIR` (builds export "
                                       "the encoder of latent models)")  # fmt: skip
        return self.runners[Component.VAE_ENCODER].infer({"image": x})["latent"]

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        """:meth:`encode` on the host: x_0 (N, C, h, w) float32 as a NumPy array."""
        with self._lock, self._on_device():
            x_0 = self.encode(images)
            return np.asarray(x_0 if self.xp is np else self.xp.asnumpy(x_0), dtype=np.float32)

    def contextual_forward(self, x_0: np.ndarray, prompt: str, timesteps: Sequence[int], noise: np.ndarray) -> list[np.ndarray]:
        """``ContextDiffPipeline.contextual_forward``: x_t of x_0 at each timestep (method doc §3, :func:`runtime.sampling.contextual_forward`)
        with ``prompt``'s text and one ``noise`` draw, on the host."""
        with self._lock, self._on_device():
            text = self.encode_prompt([prompt] * x_0.shape[0])
            out = contextual_forward(self._context_shift(text), self.xp.array(x_0), self.xp.array(noise), self.schedule, timesteps)
            return [np.asarray(x if self.xp is np else self.xp.asnumpy(x), dtype=np.float32) for x in out]

    def edit(self, image: Any, prompt: str, **kwargs: Any) -> GenerationOutput:
        """Edit one image: image-to-image, inversion edit or inpainting (:func:`runtime.image_editing.edit_image`, its
        arguments: ``mode``, ``source_prompt``, ``mask``, ``strength``, ``region_noise``, ``num_inference_steps``,
        ``guidance_scale``, ``seed``, ...). Same arguments and results as ``ContextDiffPipeline.edit``."""
        from runtime.image_editing import edit_image

        return edit_image(self, image, prompt, **kwargs)

    def decode(self, x0: Any, output_type: str) -> Any:
        """Final sample -> images; the one device-to-host copy of a call happens here."""
        if output_type != "latent" and Component.VAE_DECODER in self.runners:
            x0 = self.runners[Component.VAE_DECODER].infer({"latent": self.xp.ascontiguousarray(x0, dtype=self.xp.float32)})["image"]
        host = x0 if self.xp is np else self.xp.asnumpy(x0)
        return np.asarray(host, dtype=np.float32) if output_type == "latent" else to_images(host, output_type)

    # -- the call --------------------------------------------------------------------------------------
    @property
    def max_images(self) -> int:
        """Most images one call can make: what every engine's batch profile allows (guidance doubling included)."""
        per_image = {Component.ADAPTER: 2}  # r_t and r_s; the "guided" variant's second text may take a second call
        return min(a.profile.max[0] // per_image.get(c, batch_range(c, 1)[1]) for c, a in self.manifest.components.items())

    def validate(self, prompt: str | Sequence[str], **kwargs: Any) -> GenerationRequest:
        """Check a call's arguments (those of ``__call__``) against the model and the engines' profiles; resolve the
        defaults and the seed. Raises InvalidArgumentError naming the argument."""
        request = validate_request(self.limits, prompt=prompt, **kwargs)
        self._check_profiles(request)
        # LoRAs are checked when the call runs (``run``): the service switches them between calls
        check_step_cache(full_step_plan(request.num_inference_steps, request.cache_interval), can_cache=self.manifest.step_cache,
                         where=str(self.manifest.root), name="cache_interval", value=request.cache_interval)  # fmt: skip
        return request

    def run(self, request: GenerationRequest, *, progress: bool = True, strength: float = 1.0, blend: LocalBlend | None = None,
            clip_sample: bool | None = None, full_steps: Sequence[int] | None = None) -> GenerationOutput:  # fmt: skip
        """Generate for a validated request (``validate`` or ``merge_requests``; its ``cache_interval`` is step
        caching's); ``strength``, ``blend``, ``clip_sample`` and ``full_steps`` as in ``__call__``."""
        self._check_profiles(request)
        check_strength(strength, request.latents)
        steps_run = len(self.schedule.plan(request.num_inference_steps, request.eta, strength).steps)
        full = full_step_plan(steps_run, request.cache_interval, full_steps)
        check_step_cache(full, can_cache=self.manifest.step_cache, where=str(self.manifest.root), lora_on_unet=Component.UNET in self._lora_components,
                         name="cache_interval" if full_steps is None else "full_steps")  # fmt: skip
        with self._lock, self._on_device():
            return generate(  # noise and latents reach the runners' device once per call (xp.array)
                request, self.limits, self.schedule.with_clip_sample(clip_sample), encode=self.encode_prompt,
                denoiser=lambda text, req: self._denoiser(text, req, full), context_shift=self._context_shift,
                decode=self.decode, to_device=self.xp.array, strength=strength, blend=blend,
                progress=lambda steps: tqdm(steps, desc="contextual DDIM", disable=not progress, leave=False),
            )  # fmt: skip

    def invert(self, sample: np.ndarray, prompt: str | Sequence[str], num_inference_steps: int = 50, *, strength: float = 1.0,
               progress: bool = True, callback: Callable[[StepOutput], Any] | None = None, clip_sample: bool | None = None) -> np.ndarray:  # fmt: skip
        """``ContextDiffPipeline.invert``: contextual DDIM inversion (method doc §7) of x_0 ``sample`` (N, C, h, w)
        float32 with ``prompt`` and no guidance; returns x_T (x_t part way for ``strength`` < 1) float32 on the host.
        ``callback`` sees each step's x_t (the runners' arrays, the loop's own: copy what you keep)."""
        request = validate_inversion(self.limits, sample=sample, prompt=prompt, num_inference_steps=num_inference_steps)
        self._check_profiles(request)
        plan = self.schedule.with_clip_sample(clip_sample).inversion_plan(request.num_inference_steps, strength)
        with self._lock, self._on_device():
            text = self.encode_prompt(request.prompts)
            x_T = invert(self._denoiser(text, request), self._context_shift(text), self.xp.array(request.latents), plan, callback=callback,
                         progress=lambda steps: tqdm(steps, desc="contextual DDIM inversion", disable=not progress, leave=False))  # fmt: skip
            return np.asarray(x_T if self.xp is np else self.xp.asnumpy(x_T), dtype=np.float32)

    def run_batch(self, requests: Sequence[GenerationRequest], *, progress: bool = False) -> list[GenerationOutput]:
        """Several validated calls with one ``batch_key`` in one engine pass; each gets exactly the output (and seed)
        it gets from ``run`` alone: its noise comes from its own seed (runtime.noise.draw_noise_parts), and every
        component computes batch items independently (equality asserted in tests/runtime/test_generator.py)."""
        merged = merge_requests(requests)
        images = self.run(merged, progress=progress).images
        outputs, start = [], 0
        for r in requests:
            outputs.append(GenerationOutput(images=images[start : start + r.batch_size], seed=r.seed))
            start += r.batch_size
        return outputs

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
        strength: float = 1.0,
        progress: bool = True,
        blend: LocalBlend | None = None,
        contextual_guidance: str | None = None,
        clip_sample: bool | None = None,
        cache_interval: int = 1,
        full_steps: Sequence[int] | None = None,
    ) -> GenerationOutput:
        """Same arguments and results as ``ContextDiffPipeline.__call__``. The callback's arrays are the runners'
        (NumPy on the CPU, CuPy on a GPU) and belong to the loop: copy what you keep. ``cache_interval`` k > 1 (or
        ``full_steps``) runs step caching: an engine directory built with ``--step-cache``; 1 is the exact path."""
        request = validate_request(
            self.limits, prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, eta=eta, seed=seed, latents=latents, height=height, width=width,
            output_type=output_type, callback=callback, contextual_guidance=contextual_guidance, cache_interval=cache_interval,
        )  # fmt: skip
        # run checks the engines' profiles
        return self.run(request, progress=progress, strength=strength, blend=blend, clip_sample=clip_sample, full_steps=full_steps)

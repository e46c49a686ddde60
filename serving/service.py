"""The engine side of the service, no Ray: request bodies become validated generator calls (jobs); a batch of jobs
is grouped by compatible settings and run in as few engine calls as the batch profile allows.

Batching never changes results: ``runtime.Generator.run_batch`` gives every job the images its seed gives alone, and
``runtime.image_editing.run_edits`` every edit the image ``Generator.edit`` gives it alone (each edit's encoding and
inversion run alone, the sampling pass is shared).
"""

from __future__ import annotations

import base64
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from runtime.errors import ConfigError, ContextDiffError, InvalidArgumentError
from runtime.image_editing import EditCall, check_edit, run_edits
from runtime.images import make_grid
from runtime.lora import lora_weights, parse_loras
from runtime.noise import resolve_seed
from runtime.specs import Component
from runtime.step_cache import LORA_ON_UNET
from runtime.validation import GenerationRequest
from serving.config import ServiceConfig
from serving.schema import MAX_SEED, ApiLimits, ComponentInfo, ModelInfo, ResponseFormat, api_limits, edit_request_model, request_model

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """One HTTP request on its way to the engines. ``cancelled`` is set when its client is gone or its time is up:
    a job not yet started is then left out of its batch."""

    request: GenerationRequest
    response_format: ResponseFormat
    arrived: float  # time.monotonic() at arrival
    cancelled: bool = False
    lora: str | None = None  # a LoRA of the config by name; None: the base weights
    edit: EditCall | None = None  # an image edit (POST /v1/images/edits); its request is the sampling pass's

    @property
    def images(self) -> int:
        return self.request.batch_size

    @property
    def batch_key(self) -> tuple:
        """Jobs with equal keys can share an engine call: generations by their request's key, edits by the edit's."""
        return ("generate", *self.request.batch_key) if self.edit is None else ("edit", *self.edit.batch_key)


@dataclass(frozen=True)
class JobResult:
    images: np.ndarray  # float32 (num_images, H, W, 3) in [0, 1]
    seed: int
    batch_images: int  # images in the engine call that made these
    queue_ms: float
    engine_ms: float


@dataclass(frozen=True)
class BatchStats:
    """What one engine call did, for metrics: its images, the engine time, and each job's wait before it."""

    images: int
    engine_s: float
    queue_waits_s: tuple[float, ...]


def chunk_jobs(jobs: Sequence[Job], max_images: int) -> list[list[Job]]:
    """Jobs -> engine calls: grouped by ``batch_key`` (steps, guidance, eta, size, cache interval; an edit's strength, clipping, mask)
    and LoRA, in arrival order within a group, each call at most ``max_images`` images (a job is never split: its
    noise is one draw from its seed)."""
    groups: dict[tuple, list[list[Job]]] = {}
    for job in jobs:
        chunks = groups.setdefault((job.batch_key, job.lora), [[]])
        if sum(j.images for j in chunks[-1]) + job.images > max_images:
            chunks.append([])
        chunks[-1].append(job)
    return [chunk for chunks in groups.values() for chunk in chunks if chunk]


def decode_png(field: str, data: str, max_size: tuple[int, int]) -> Any:
    """A base64 PNG field -> the PIL image as stored (its mode checked by runtime.validation), or an error naming ``field``.
    An image wider or higher than ``max_size`` (width, height) is refused from its header, before it is decompressed (a
    small PNG can declare a huge image)."""
    from PIL import Image

    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        raise InvalidArgumentError(field, data, "a base64-encoded PNG (RFC 4648 alphabet, padded)") from None
    try:
        with Image.open(io.BytesIO(raw), formats=["PNG"]) as image:
            if image.size[0] > max_size[0] or image.size[1] > max_size[1]:
                raise InvalidArgumentError(field, f"a {image.size[0]}x{image.size[1]} PNG", f"at most {max_size[0]}x{max_size[1]} (the engines' largest size)")
            image.load()
            return image
    except InvalidArgumentError:
        raise
    except Exception as exc:  # PIL's errors for a truncated or foreign file vary (OSError, SyntaxError, ValueError, ...)
        raise InvalidArgumentError(field, f"{len(raw)} bytes that are not a PNG ({type(exc).__name__})", "a base64-encoded PNG") from None


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W, 3) float in [0, 1] -> PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


class ImageService:
    """A loaded ``runtime.Generator`` behind the API: validation, batch execution, encodings, model info."""

    def __init__(self, config: ServiceConfig, generator: Any = None, on_batch: Callable[[BatchStats], None] | None = None) -> None:
        from runtime.generator import Generator

        self.config = config
        self.generator = generator if generator is not None else Generator.from_dir(config.engine_dir, backend=config.backend)
        engine_max = self.generator.max_images
        if config.max_batch_images is not None and config.max_batch_images > engine_max:
            raise ConfigError(f"invalid serving config: max_batch_images={config.max_batch_images}: the engines in {self.generator.manifest.root} "
                              f"take at most {engine_max} image(s) per call; rebuild with `python export/build_engines.py --batch N`")  # fmt: skip
        self.max_batch_images = config.max_batch_images or engine_max
        if self.max_batch_images == 1:
            logger.warning("the engines in %s take one image per call: requests are served one at a time (build with --batch 8 to batch)",
                           self.generator.manifest.root)  # fmt: skip
        self.limits: ApiLimits = api_limits(self.generator, self.max_batch_images, config.max_steps)
        self.loras = {name: parse_loras([(Path(e.file).expanduser().resolve(), e.scale)]) for name, e in config.loras.items()}
        self.lora_components: dict[str, frozenset[Component]] = {}  # the components each LoRA changes
        for name, specs in self.loras.items():  # every LoRA checked against the engines at start (runtime.lora's errors)
            try:
                weights = lora_weights(self.generator.manifest, specs, self.generator.backend, module_shapes=self.generator.module_shapes)
            except ContextDiffError as exc:
                raise ConfigError(f"invalid serving config: loras.{name}: {exc}") from None
            self.lora_components[name] = frozenset(weights)
        self.lora: str | None = None  # the LoRA the generator's weights hold now
        self.request_model = request_model(self.limits, tuple(self.loras))
        self.edit_request_model = edit_request_model(self.limits)
        self.on_batch = on_batch

    def job(self, body: Any) -> Job:
        """A validated body -> a job; the Generator's own rules (InvalidArgumentError naming the argument) apply."""
        seed = resolve_seed(body.seed, high=MAX_SEED + 1)  # a fresh one JSON-safe
        request = self.generator.validate(
            [body.prompt] * body.num_images, negative_prompt=body.negative_prompt, num_inference_steps=body.num_inference_steps,
            guidance_scale=body.guidance_scale, eta=body.eta, seed=seed, height=body.height, width=body.width, output_type="np",
            contextual_guidance=body.contextual_guidance, cache_interval=body.cache_interval,
        )  # fmt: skip
        lora = getattr(body, "lora", None)
        if lora is not None and request.cache_interval > 1 and Component.UNET in self.lora_components[lora]:  # Generator.run would refuse it
            raise InvalidArgumentError("cache_interval", request.cache_interval, f"{LORA_ON_UNET}; lora {lora!r} changes the UNet")
        return Job(request, ResponseFormat(body.response_format), time.monotonic(), lora=lora)

    def edit_job(self, body: Any) -> Job:
        """A validated edit body -> a job, checked by the same functions as ``Generator.edit`` (runtime.image_editing.check_edit)."""
        largest = (self.limits.width.maximum, self.limits.height.maximum)
        image = decode_png("image", body.image, largest)
        mask = None if body.mask is None else decode_png("mask", body.mask, largest)
        call = check_edit(self.generator, image, body.prompt, mode=body.mode, source_prompt=body.source_prompt, mask=mask, strength=body.strength,
                          region_noise=body.region_noise, num_inference_steps=body.num_inference_steps, seed=body.seed, high_seed=MAX_SEED + 1,
                          guidance_scale=body.guidance_scale, eta=body.eta, negative_prompt=body.negative_prompt or None, output_type="np",
                          contextual_guidance=body.contextual_guidance, cache_interval=body.cache_interval)  # fmt: skip
        return Job(call.request, ResponseFormat(body.response_format), time.monotonic(), edit=call)

    def run_jobs(self, jobs: Sequence[Job]) -> list[JobResult | BaseException | None]:
        """Results in the order of ``jobs``: a JobResult, the exception its engine call raised, or None for a job
        cancelled before its call started."""
        results: dict[int, JobResult | BaseException | None] = {}
        for chunk in chunk_jobs(jobs, self.max_batch_images):
            live = [j for j in chunk if not j.cancelled]
            for j in chunk:
                results[id(j)] = None
            if not live:
                continue
            start = time.monotonic()
            try:
                if live[0].lora != self.lora:  # one LoRA per call (chunk_jobs); switched from the base weights, never accumulated
                    self.generator.set_loras(self.loras.get(live[0].lora, ()))
                    self.lora = live[0].lora
                if live[0].edit is None:
                    outputs = self.generator.run_batch([j.request for j in live])
                else:
                    outputs = run_edits(self.generator, [j.edit for j in live])
            except Exception as exc:  # an engine failure is this batch's, reported to each of its requests
                logger.exception("engine call for %d request(s) failed", len(live))
                for j in live:
                    results[id(j)] = exc
                continue
            engine_s, images = time.monotonic() - start, sum(j.images for j in live)
            for j, out in zip(live, outputs):
                results[id(j)] = JobResult(out.images, out.seed, images, (start - j.arrived) * 1e3, engine_s * 1e3)
            if self.on_batch is not None:
                self.on_batch(BatchStats(images, engine_s, tuple(start - j.arrived for j in live)))
        return [results[id(j)] for j in jobs]

    def encode(self, result: JobResult) -> dict[str, Any]:
        """The JSON response body (serving.schema.ImagesResponse)."""
        h, w = result.images.shape[1:3]
        images = [base64.b64encode(png_bytes(image)).decode("ascii") for image in result.images]
        return dict(images=images, seed=result.seed, width=w, height=h, batch_images=result.batch_images,
                    queue_ms=round(result.queue_ms, 3), engine_ms=round(result.engine_ms, 3))  # fmt: skip

    def png(self, result: JobResult) -> bytes:
        """One PNG: the image, or several tiled row-major (runtime.images.make_grid)."""
        return png_bytes(result.images[0] if len(result.images) == 1 else make_grid(result.images))

    def model_info(self) -> ModelInfo:
        gen, lim = self.generator, self.limits
        manifest = gen.manifest
        return ModelInfo(
            name=manifest.data["model"]["name"], engine_dir=str(manifest.root), backend=gen.backend, precision=gen.precision,
            default_height=lim.height.default, default_width=lim.width.default,
            height=dict(minimum=lim.height.minimum, maximum=lim.height.maximum, multiple=lim.height.multiple),
            width=dict(minimum=lim.width.minimum, maximum=lim.width.maximum, multiple=lim.width.multiple),
            max_images_per_request=lim.max_images, max_batch_images=self.max_batch_images, max_steps=lim.max_steps,
            recommended_guidance_scale=lim.default_guidance, contextual_guidance=lim.contextual_guidance, step_cache=lim.step_cache,
            components={c.value: ComponentInfo(precision=a.precision, profile=a.profile.to_json()) for c, a in manifest.components.items()},
            loras={name: specs[0].to_json() for name, specs in self.loras.items()},
        )  # fmt: skip

"""Request and response models of the HTTP API, sized from the engine directory so the published OpenAPI schema is
exact: every range, enum and size the engines accept, nothing more (``additionalProperties: false``, strict types).

A request the schema accepts is one the engines can serve; one it rejects gets a 422 naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, Literal, Sequence

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, create_model
from pydantic_core import PydanticCustomError

from runtime.specs import Component
from runtime.step_cache import no_step_cache

MAX_PROMPT_CHARS = 2000  # longer prompts are truncated by the tokenizer anyway; this bounds the work of one request
MAX_GUIDANCE = 100.0
MAX_SEED = 2**53 - 1  # the largest integer every JSON client holds exactly (JavaScript's MAX_SAFE_INTEGER); the Generator takes up to 2**63 - 1


def _integral(value: Any) -> Any:
    """JSON Schema's "integer" includes numbers with a zero fraction (7.0): those become ints; strings and booleans stay
    what they are, and the strict int check refuses them."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = Annotated[int, BeforeValidator(_integral)]


def _bounded_int(**bounds: Any) -> Any:
    """JsonInt with its bounds inside the type, so that ``bounded | None`` publishes them (as minimum/maximum/multipleOf)."""
    return Annotated[int, Field(**bounds), BeforeValidator(_integral)]


class ResponseFormat(str, Enum):
    """``png``: the image as PNG bytes (several images tiled in a grid, row-major, like the CLI); ``json``: every
    image as base64 PNG, with the seed and timings."""

    png = "png"
    json = "json"


@dataclass(frozen=True)
class SizeRange:
    """Image sizes (pixels) the engines take: ``minimum`` to ``maximum`` in steps of ``multiple``; ``default`` the model's."""

    minimum: int
    maximum: int
    multiple: int
    default: int


@dataclass(frozen=True)
class ApiLimits:
    """What the schema allows, from the engine directory and the service config."""

    height: SizeRange
    width: SizeRange
    max_images: int
    max_steps: int
    default_guidance: float
    contextual_guidance: str = "conditional"  # the model's variant (its scheduler config)
    step_cache: bool = False  # the engine directory has step caching's graphs (cache_interval > 1 allowed)
    engine_dir: str = ""  # where the engines are (named in errors)


def api_limits(generator: Any, max_images: int, max_steps: int) -> ApiLimits:
    """The limits of a loaded ``runtime.Generator``: sizes from its UNet's profile (every spatial engine shares it)."""
    limits, profile = generator.limits, generator.manifest.components[Component.UNET].profile
    f, q = limits.vae_scale_factor, limits.pixel_factor

    def size(axis: int, default: int) -> SizeRange:
        lo = max(q, -(-profile.min[axis] * f // q) * q)
        return SizeRange(lo, profile.max[axis] * f // q * q, q, default)

    return ApiLimits(size(1, limits.default_height), size(2, limits.default_width), max_images, max_steps,
                     limits.recommended_guidance_scale or 7.5, generator.schedule.config.contextual_guidance.value,
                     generator.manifest.step_cache, str(generator.manifest.root))  # fmt: skip


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


def request_model(limits: ApiLimits, loras: Sequence[str] = ()) -> type[BaseModel]:
    """The ``POST /v1/images`` body for these limits (a pydantic model; FastAPI publishes its JSON schema)."""

    def size(r: SizeRange, axis: str) -> Any:
        what = f"image {axis} in pixels: {r.minimum} to {r.maximum} in steps of {r.multiple} (the engines' profile); null: {r.default}"
        if r.minimum == r.maximum:  # engines of one size: the schema says that one value
            return (Annotated[Literal[r.minimum], BeforeValidator(_integral)] | None, Field(None, description=f"image {axis}: {r.minimum} "
                    f"(the engines were built for this size only); null: {r.default}"))  # fmt: skip
        return (_bounded_int(ge=r.minimum, le=r.maximum, multiple_of=r.multiple) | None, Field(None, description=what))

    return create_model(  # type: ignore[call-overload]
        "ImageRequest", __base__=Strict,
        prompt=(str, Field(..., max_length=MAX_PROMPT_CHARS, description="the text to generate ('' is the unconditional prompt)")),
        height=size(limits.height, "height"),
        width=size(limits.width, "width"),
        num_images=(JsonInt, Field(1, ge=1, le=limits.max_images, description="images from this prompt and seed (one engine call)")),
        lora=(Literal[tuple(loras)] | None if loras else None, Field(None, description="a LoRA of the service's config by name (GET /v1/model "
                                                                   "lists them); null: the base weights")),  # fmt: skip
        **_sampling_fields(limits),
    )  # fmt: skip


def _cache_interval(limits: ApiLimits) -> tuple[Any, Any]:
    """``cache_interval``: 1 to max_steps on engines built with step caching's graphs; else 1 only, and a request for
    more is refused saying how to build engines that cache (runtime.step_cache.no_step_cache)."""
    what = "step caching (DeepCache): every k-th step runs the whole UNet, the ones between only its outer blocks on the cached deep feature"
    if limits.step_cache:
        return JsonInt, Field(1, ge=1, le=limits.max_steps, description=f"{what}; 1: every step (the exact path). GET /v1/model: step_cache")
    refusal = f"1: {no_step_cache(limits.engine_dir)}"

    def only_one(value: int) -> int:
        if value != 1:
            raise PydanticCustomError("step_cache", refusal)
        return value

    return (Annotated[int, BeforeValidator(_integral), AfterValidator(only_one)],
            Field(1, ge=1, json_schema_extra={"maximum": 1}, description=f"{what}. Only 1 here: these engines were built without step "
                  "caching's graphs (build them with `python export/build_engines.py --step-cache`)"))  # fmt: skip


def _sampling_fields(limits: ApiLimits) -> dict[str, Any]:
    """The fields ``/v1/images`` and ``/v1/images/edits`` share."""
    return dict(
        negative_prompt=(str, Field("", max_length=MAX_PROMPT_CHARS, description="what guidance steers away from")),
        num_inference_steps=(JsonInt, Field(min(50, limits.max_steps), ge=1, le=limits.max_steps, description="DDIM steps")),
        guidance_scale=(float | None, Field(None, ge=0.0, le=MAX_GUIDANCE, allow_inf_nan=False,
                                            description=f"classifier-free guidance (1: off); null: the model's {limits.default_guidance}")),
        eta=(float, Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False, description="DDIM eta (0: deterministic)")),
        seed=(_bounded_int(ge=0, le=MAX_SEED) | None, Field(None, description="noise seed; null: a fresh one, returned in the response")),
        contextual_guidance=(Literal["conditional", "guided"] | None, Field(None, description="how guidance meets the adapter's shift "
                             f"(method doc §5); null: the model's, {limits.contextual_guidance!r}")),
        response_format=(Literal["png", "json"], Field("json", description="png: the PNG bytes (several images in a grid); json: base64 PNGs, seed, timings")),  # strict: a string, not an enum instance
        cache_interval=_cache_interval(limits),
    )  # fmt: skip


def example_png(width: int, height: int) -> str:
    """A black RGB image of ``width`` x ``height`` as base64 PNG: the schema's example image (Swagger UI's "Try it out"
    and Schemathesis' examples phase send a body the engines take)."""
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def edit_request_model(limits: ApiLimits) -> type[BaseModel]:
    """The ``POST /v1/images/edits`` body (runtime.image_editing: image-to-image, inversion edits, inpainting)."""
    sizes = (f"{limits.width.minimum} to {limits.width.maximum} wide and {limits.height.minimum} to {limits.height.maximum} high in steps of "
             f"{limits.width.multiple} (the engines' profile)")  # fmt: skip
    most = 4 * (limits.height.maximum * limits.width.maximum * 4 + 65536) // 3  # base64 of an uncompressed RGBA PNG and its chunks
    return create_model(  # type: ignore[call-overload]
        "ImageEditRequest", __base__=Strict,
        image=(str, Field(..., max_length=most, description=f"the image to edit: base64 PNG, RGB, {sizes}",
                          examples=[example_png(limits.width.default, limits.height.default)])),
        mask=(str | None, Field(None, max_length=most, description="where the edit may change the image (inpainting): base64 PNG, single-channel "
                                "(mode L or 1), the image's size, white where it may change; the image comes back unchanged where it is black; null: everywhere")),
        prompt=(str, Field(..., min_length=1, max_length=MAX_PROMPT_CHARS, description="the edited caption")),
        mode=(Literal["img2img", "invert"], Field("img2img", description="img2img: the contextual forward process to the strength step, then "
                                                   "sampling; invert: contextual DDIM inversion with source_prompt, then sampling")),
        source_prompt=(str | None, Field(None, max_length=MAX_PROMPT_CHARS, description="the image's caption; mode invert only (required there)")),
        strength=(float | None, Field(None, gt=0.0, le=1.0, allow_inf_nan=False, description="fraction of the steps run; null: 0.8 for img2img, 1 for invert")),
        region_noise=(float, Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False, description="with a mask: fresh noise mixed into the region (1 frees it "
                                   "from the source's shape)")),
        **_sampling_fields(limits),
    )  # fmt: skip


class ImagesResponse(Strict):
    images: list[str] = Field(..., description="base64-encoded PNG images, num_images of them")
    seed: int = Field(..., ge=0, le=MAX_SEED, description="the seed the images came from (send it back to reproduce them)")
    width: int
    height: int
    batch_images: int = Field(..., ge=1, description="images in the engine call that served this request (dynamic batching)")
    queue_ms: float = Field(..., ge=0, description="time from arrival to the start of the engine call")
    engine_ms: float = Field(..., ge=0, description="time of the engine call")


class ErrorDetail(Strict):
    field: str | None = Field(None, description="the request field at fault, when one is")
    value: Any = Field(None, description="the value received")
    allowed: str = Field(..., description="what is allowed")
    message: str


class ErrorResponse(Strict):
    error: ErrorDetail


class Status(Strict):
    status: str


class ComponentInfo(Strict):
    precision: str
    profile: dict[str, list[int]] = Field(..., description="min/opt/max of (batch, height, width) in sample units")


class ModelInfo(Strict):
    name: str
    engine_dir: str
    backend: str
    precision: str | None = Field(None, description="the openvino backend's inference precision; null for the others")
    default_height: int
    default_width: int
    height: dict[str, int] = Field(..., description="minimum, maximum, multiple (pixels)")
    width: dict[str, int]
    max_images_per_request: int
    max_batch_images: int = Field(..., description="images one engine call serves (requests joined by dynamic batching)")
    max_steps: int
    recommended_guidance_scale: float
    contextual_guidance: str = Field("conditional", description="the model's variant of guidance and the shift (method doc §5)")
    step_cache: bool = Field(False, description="whether requests may ask cache_interval > 1: the engine directory has step caching's "
                             "graphs (built with `python export/build_engines.py --step-cache`)")
    components: dict[str, ComponentInfo]
    loras: dict[str, dict[str, Any]] = Field(default_factory=dict, description="LoRAs a request may name: name -> file, scale")

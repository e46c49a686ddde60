"""One declarative spec per exported component: tensor names, dtypes, symbolic dims, shape profiles, sample inputs.

The same objects drive the ONNX export (names and dynamic axes), the TensorRT optimization profiles (min/opt/max
shapes), the manifest, and the runtime's buffers. Tensor names live here and nowhere else. Torch-free.

Symbolic dims: ``batch`` (the component's own batch: 2N for the text encoder and UNet with guidance, 2N for the
adapter's stacked t and s), ``height``/``width`` (of the sampled tensor: latent or pixel), ``image_height``/
``image_width`` (decoded pixels), and the model constants ``channels``, ``text_length``, ``text_dim``.
A video model's components have the same specs: its F frames are folded into the batch (N videos: batch N·F, or
2N·F), F fixed at export and recorded in the manifest.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from runtime.errors import InvalidArgumentError


class Component(str, enum.Enum):
    TEXT_ENCODER = "text_encoder"
    UNET = "unet"
    ADAPTER = "adapter"
    VAE_DECODER = "vae_decoder"
    VAE_ENCODER = "vae_encoder"  # video engine directories of latent models: inversion starts from the frames' latents
    UNET_SHALLOW = "unet_shallow"  # step caching (--step-cache): the UNet's outer blocks on a full step's cached feature


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32" or "int64"
    dims: tuple[str | int, ...]

    def shape(self, dims: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else int(dims[d]) for d in self.dims)

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "dims": list(self.dims)}


@dataclass(frozen=True)
class ModelDims:
    """The constants of one model that fix the non-dynamic dims."""

    channels: int  # C of the sampled tensor
    text_length: int  # L
    text_dim: int  # D
    vocab_size: int
    num_train_timesteps: int
    vae_scale_factor: int  # 1 in pixel space
    sample_factor: int  # height/width of the sampled tensor must be multiples of this
    feature_channels: int = 0  # step caching: channels of the deep feature at the split (contextdiff_ref/models/step_cache.py); 0: no step caching

    def resolve(self, batch: int, height: int, width: int) -> dict[str, int]:
        """All dims for a component batch and a sampled-tensor size (height, width)."""
        f = self.vae_scale_factor
        return dict(batch=batch, height=height, width=width, image_height=height * f, image_width=width * f,
                    channels=self.channels, text_length=self.text_length, text_dim=self.text_dim, feature_channels=self.feature_channels)  # fmt: skip


@dataclass(frozen=True)
class Profile:
    """Range of the dynamic dims (batch, height, width) an artifact accepts; min <= opt <= max elementwise."""

    min: tuple[int, int, int]
    opt: tuple[int, int, int]
    max: tuple[int, int, int]

    def contains(self, batch: int, height: int, width: int) -> bool:
        return all(lo <= v <= hi for lo, v, hi in zip(self.min, (batch, height, width), self.max))

    def to_json(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, data: Mapping[str, list[int]]) -> Profile:
        return cls(tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))  # type: ignore[arg-type]


@dataclass(frozen=True)
class ComponentSpec:
    component: Component
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    spatial: bool  # height/width are dynamic axes (UNet, adapter, VAE decoder)

    @property
    def name(self) -> str:
        return self.component.value

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """{tensor name: {axis: dim name}} for every dynamic axis (batch, and spatial where it applies)."""
        dynamic = {"batch", "height", "width", "image_height", "image_width"} if self.spatial else {"batch"}
        return {t.name: {i: d for i, d in enumerate(t.dims) if d in dynamic} for t in self.inputs + self.outputs}

    def input_shapes(self, model: ModelDims, batch: int, height: int, width: int) -> dict[str, tuple[int, ...]]:
        dims = model.resolve(batch, height, width)
        return {t.name: t.shape(dims) for t in self.inputs}

    def output_shapes(self, model: ModelDims, batch: int, height: int, width: int) -> dict[str, tuple[int, ...]]:
        dims = model.resolve(batch, height, width)
        return {t.name: t.shape(dims) for t in self.outputs}

    def call_dims(self, shapes: Mapping[str, tuple[int, ...]], model: ModelDims | None = None) -> tuple[int, int, int]:
        """(batch, height, width) of a call from its input shapes: height and width of the sampled tensor (0 for the
        text encoder); a VAE encoder's input is pixels, divided by ``model``'s VAE scale factor."""
        first = self.inputs[0]
        shape = dict(zip(first.dims, shapes[first.name]))
        if "image_height" in shape and model is not None:
            f = model.vae_scale_factor
            return shape["batch"], shape["image_height"] // f, shape["image_width"] // f
        return shape["batch"], shape.get("height", 0), shape.get("width", 0)

    def sample_inputs(self, model: ModelDims, batch: int, height: int, width: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Random inputs of the right shapes: N(0, 1) floats, token ids in the vocabulary, integer timesteps."""
        feed = {}
        for t, shape in zip(self.inputs, self.input_shapes(model, batch, height, width).values()):
            if t.name == "input_ids":
                feed[t.name] = rng.integers(0, model.vocab_size, shape, dtype=np.int64)
            elif t.name == "timestep":
                feed[t.name] = rng.integers(0, model.num_train_timesteps, shape, dtype=np.int64)
            else:
                feed[t.name] = rng.standard_normal(shape, dtype=np.float32)
        return feed

    def to_json(self) -> dict:
        return {"inputs": [t.to_json() for t in self.inputs], "outputs": [t.to_json() for t in self.outputs]}


_SAMPLE = ("batch", "channels", "height", "width")
_TEXT = ("batch", "text_length", "text_dim")
# Step caching at skip branch 1 (contextdiff_ref/models/step_cache.py): the deep feature entering the up layer that takes
# the branch, inside the UNet's last up-block, so at the sampled tensor's own size
_FEATURE = ("batch", "feature_channels", "height", "width")

SPECS: dict[Component, ComponentSpec] = {
    Component.TEXT_ENCODER: ComponentSpec(
        Component.TEXT_ENCODER,
        inputs=(TensorSpec("input_ids", "int64", ("batch", "text_length")),),
        outputs=(TensorSpec("text_states", "float32", _TEXT),),
        spatial=False,
    ),
    Component.UNET: ComponentSpec(
        Component.UNET,
        inputs=(TensorSpec("sample", "float32", _SAMPLE), TensorSpec("timestep", "int64", ("batch",)),
                TensorSpec("encoder_hidden_states", "float32", _TEXT)),  # fmt: skip
        outputs=(TensorSpec("model_output", "float32", _SAMPLE),),
        spatial=True,
    ),
    Component.ADAPTER: ComponentSpec(
        Component.ADAPTER,
        inputs=(TensorSpec("sample", "float32", _SAMPLE), TensorSpec("encoder_hidden_states", "float32", _TEXT),
                TensorSpec("timestep", "int64", ("batch",))),  # fmt: skip
        outputs=(TensorSpec("shift", "float32", _SAMPLE),),
        spatial=True,
    ),
    Component.VAE_DECODER: ComponentSpec(
        Component.VAE_DECODER,
        inputs=(TensorSpec("latent", "float32", _SAMPLE),),
        outputs=(TensorSpec("image", "float32", ("batch", 3, "image_height", "image_width")),),
        spatial=True,
    ),
    Component.VAE_ENCODER: ComponentSpec(
        Component.VAE_ENCODER,
        inputs=(TensorSpec("image", "float32", ("batch", 3, "image_height", "image_width")),),  # in [-1, 1]
        outputs=(TensorSpec("latent", "float32", _SAMPLE),),  # the latent mean, scaled as sampled
        spatial=True,
    ),
    Component.UNET_SHALLOW: ComponentSpec(
        Component.UNET_SHALLOW,
        inputs=(TensorSpec("sample", "float32", _SAMPLE), TensorSpec("timestep", "int64", ("batch",)),
                TensorSpec("encoder_hidden_states", "float32", _TEXT), TensorSpec("feature", "float32", _FEATURE)),  # fmt: skip
        outputs=(TensorSpec("model_output", "float32", _SAMPLE),),
        spatial=True,
    ),
}
# The UNet of a step-cache build: the same inputs, and the feature the shallow UNet takes as a second output
UNET_WITH_FEATURE = ComponentSpec(Component.UNET, SPECS[Component.UNET].inputs, (*SPECS[Component.UNET].outputs, TensorSpec("feature", "float32", _FEATURE)),
                                  spatial=True)  # fmt: skip


def component_spec(component: Component, *, step_cache: bool = False) -> ComponentSpec:
    """The spec of ``component``; with ``step_cache`` the UNet's is :data:`UNET_WITH_FEATURE`."""
    return UNET_WITH_FEATURE if step_cache and component is Component.UNET else SPECS[component]


def batch_range(component: Component, max_images: int) -> tuple[int, int]:
    """(min, max) component batch for up to ``max_images`` images per call, guidance doubling included."""
    if component in (Component.VAE_DECODER, Component.VAE_ENCODER):
        return 1, max_images
    if component is Component.ADAPTER:
        return 2, 4 * max_images  # r_t and r_s stacked, for both texts under "guided" contextual guidance (method doc §5)
    return 1, 2 * max_images  # [uncond; cond]


def make_profile(component: Component, model: ModelDims, *, max_images: int, height: int, width: int, dynamic_size: bool,
                 num_frames: int = 1) -> Profile:  # fmt: skip
    """Profile for images of ``height`` x ``width`` pixels: batch from 1 to the max; the size static by default, or
    from half to twice the default (multiples of the model's factor) with ``dynamic_size``. For a video model
    (``num_frames`` F > 1: frames folded into the batch) ``max_images`` counts videos and every batch bound is F times
    the image one (a video's frames always travel together)."""
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
        raise InvalidArgumentError("max_images", max_images, "a positive integer")
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise InvalidArgumentError("num_frames", num_frames, "a positive integer")
    f, q = model.vae_scale_factor, model.sample_factor
    h, w = height // f, width // f
    lo_b, hi_b = (num_frames * b for b in batch_range(component, max_images))
    if not dynamic_size or not SPECS[component].spatial:
        return Profile((lo_b, h, w), (hi_b, h, w), (hi_b, h, w))
    half = lambda v: max(q, (v // 2) // q * q)  # noqa: E731
    return Profile((lo_b, half(h), half(w)), (hi_b, h, w), (hi_b, 2 * h, 2 * w))

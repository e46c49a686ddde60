"""torch modules whose forward takes exactly a component spec's inputs, in order (runtime/specs.py): what is exported
to ONNX and what the Torch runner runs."""

from __future__ import annotations

import torch
from torch import nn

from contextdiff_ref.models.coordinates import unet_forward
from contextdiff_ref.models.model_dir import ModelComponents, model_limits
from contextdiff_ref.models.step_cache import DEFAULT_BRANCH, CachedUNet
from contextdiff_ref.models.text import max_text_length
from runtime.errors import ConfigError, InvalidArgumentError
from runtime.specs import Component, ModelDims


class TextEncoderGraph(nn.Module):
    def __init__(self, text_encoder: nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, L) int64 -> (B, L, D)
        return self.text_encoder(input_ids, return_dict=False)[0]


class UNetGraph(nn.Module):
    """(B, C, H, W), (B,), (B, L, D) -> (B, C, H, W); coordinate planes, if the model has them, are added inside."""

    def __init__(self, unet: nn.Module, coordinates: bool = False) -> None:
        super().__init__()
        self.unet, self.coordinates = unet, coordinates

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        return unet_forward(self.unet, sample, timestep, encoder_hidden_states, coordinates=self.coordinates)


class UNetFeatureGraph(nn.Module):
    """Step caching's full step at skip ``branch``: ``UNetGraph``'s prediction and the feature entering the up layer
    that takes the branch (:meth:`CachedUNet.full`)."""

    def __init__(self, unet: nn.Module, coordinates: bool = False, branch: int = DEFAULT_BRANCH) -> None:
        super().__init__()
        self.unet, self.cached = unet, CachedUNet(unet, coordinates=coordinates, branch=branch)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cached.full(sample, timestep, encoder_hidden_states)


class UNetShallowGraph(nn.Module):
    """Step caching's shallow step at skip ``branch``: the prediction from the UNet's outer layers on a full step's
    ``feature`` (:meth:`CachedUNet.shallow`)."""

    def __init__(self, unet: nn.Module, coordinates: bool = False, branch: int = DEFAULT_BRANCH) -> None:
        super().__init__()
        self.unet, self.cached = unet, CachedUNet(unet, coordinates=coordinates, branch=branch)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        return self.cached.shallow(sample, timestep, encoder_hidden_states, feature)


class AdapterGraph(nn.Module):
    def __init__(self, adapter: nn.Module) -> None:
        super().__init__()
        self.adapter = adapter

    def forward(self, sample: torch.Tensor, encoder_hidden_states: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.adapter(sample, encoder_hidden_states, timestep)


class VaeDecoderGraph(nn.Module):
    """latent (B, C, h, w) as sampled -> image (B, 3, H, W) in about [-1, 1]; the latent scaling is inside."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.scale = 1.0 / vae.config.scaling_factor
        self.shift = getattr(vae.config, "shift_factor", None) or 0.0

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent * self.scale + self.shift, return_dict=False)[0]


class VaeEncoderGraph(nn.Module):
    """image (B, 3, H, W) in [-1, 1] -> latent (B, C, h, w) as sampled: the posterior's mean, shifted and scaled
    (``ContextDiffPipeline.encode`` after its [0, 1] -> [-1, 1])."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.scale = vae.config.scaling_factor
        self.shift = getattr(vae.config, "shift_factor", None) or 0.0

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (self.vae.encode(image, return_dict=False)[0].mean - self.shift) * self.scale


def graph_modules(components: ModelComponents, *, vae_encoder: bool = False, step_cache: bool = False,
                  cache_branch: int = DEFAULT_BRANCH) -> dict[Component, nn.Module]:  # fmt: skip
    """The modules to export, in eval mode; the VAE decoder only for latent models, and their encoder too with
    ``vae_encoder`` (video models: inversion starts from the frames' latents). With ``step_cache`` the UNet also
    outputs its feature at skip ``cache_branch`` (``UNetFeatureGraph``) and the shallow UNet follows it — a video
    model's too, over its inflated UNet (:class:`CachedUNet`)."""
    coordinates = components.unet_coordinate_channels
    modules: dict[Component, nn.Module] = {
        Component.TEXT_ENCODER: TextEncoderGraph(components.text_encoder),
        Component.UNET: UNetFeatureGraph(components.unet, coordinates, cache_branch) if step_cache else UNetGraph(components.unet, coordinates),
    }
    if step_cache:
        modules[Component.UNET_SHALLOW] = UNetShallowGraph(components.unet, coordinates, cache_branch)
    modules[Component.ADAPTER] = AdapterGraph(components.adapter)
    if components.vae is not None:
        modules[Component.VAE_DECODER] = VaeDecoderGraph(components.vae)
        if vae_encoder:
            modules[Component.VAE_ENCODER] = VaeEncoderGraph(components.vae)
    return {k: m.eval() for k, m in modules.items()}


def model_dims(components: ModelComponents, cache_branch: int = DEFAULT_BRANCH) -> ModelDims:
    """The dims a build records; ``feature_channels`` at step caching's skip ``cache_branch``."""
    limits = model_limits(components)
    return ModelDims(
        channels=limits.sample_channels,
        text_length=max_text_length(components),
        text_dim=components.text_encoder.config.hidden_size,
        vocab_size=components.text_encoder.config.vocab_size,
        num_train_timesteps=limits.num_train_timesteps,
        vae_scale_factor=limits.vae_scale_factor,
        sample_factor=limits.pixel_factor // limits.vae_scale_factor,
        feature_channels=feature_channels(components.unet, cache_branch),
    )


def feature_channels(unet: nn.Module, branch: int = DEFAULT_BRANCH) -> int:
    """Channels of step caching's feature at skip ``branch`` (a video model's: its inflated 2-D UNet's); 0 for a UNet
    that cannot be split there with the feature at the sampled tensor's own size (what the graphs' specs say)."""
    try:
        cached = CachedUNet(unet, branch=branch)
    except (ConfigError, InvalidArgumentError):
        return 0
    return cached.feature_channels if cached.full_size_feature else 0


def weights_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters()) + sum(b.numel() * b.element_size() for b in module.buffers())

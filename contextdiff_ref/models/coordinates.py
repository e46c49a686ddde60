"""Coordinate input planes for the UNet (CoordConv, Liu et al. 2018), and the one UNet call that adds them.

A convolutional UNet knows where it is only through zero padding, a weak signal under heavy noise. The planes give
it absolute position directly (a small help to the shapes model: 54 vs 49 of 72 one-object prompts placed right
after 400 steps trained at t >= 990; what fixed its random quadrants was training more at high noise, see
``training.HIGH_NOISE_PORTION``). A model directory whose
``model_index.json`` says ``"unet_coordinate_channels": true`` has a UNet with ``in_channels = out_channels + 2``
and is fed, after the sample's channels, two fixed planes (like the depth map of diffusers' depth-to-image UNet):

    channel C     x = (j + 0.5) / (W / 2) − 1   (column j, −1 at the left edge, +1 at the right)
    channel C + 1 y = (i + 0.5) / (H / 2) − 1   (row i, −1 at the top edge, +1 at the bottom)

They are computed from the sample's own height and width, so the exported UNet graph still takes the sample
(B, C, H, W) alone and the runtime does not know they exist.
"""

from __future__ import annotations

import torch
from torch import nn

COORDINATE_CHANNELS = 2


def coordinate_planes(sample: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 2, H, W) of the sample's dtype and device: x then y, in (−1, 1) at pixel centres."""
    b, _, h, w = sample.shape
    rows = (torch.arange(h, device=sample.device, dtype=torch.float32) + 0.5) * (2.0 / h) - 1.0
    cols = (torch.arange(w, device=sample.device, dtype=torch.float32) + 0.5) * (2.0 / w) - 1.0
    x = cols.view(1, 1, 1, w).expand(b, 1, h, w)
    y = rows.view(1, 1, h, 1).expand(b, 1, h, w)
    return torch.cat([x, y], dim=1).to(sample.dtype)


def unet_forward(unet: nn.Module, sample: torch.Tensor, timestep: torch.Tensor | int, text: torch.Tensor, *, coordinates: bool) -> torch.Tensor:
    """The UNet's prediction (B, C, H, W) for the sample (B, C, H, W), timestep(s) and text states (B, L, D);
    with ``coordinates`` the two planes are appended to the UNet's input first."""
    if coordinates:
        sample = torch.cat([sample, coordinate_planes(sample)], dim=1)
    return unet(sample, timestep, encoder_hidden_states=text, return_dict=False)[0]

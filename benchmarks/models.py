"""FLOP counting for the benchmarks (torch's FLOP counter, on the meta device: no weights, no time), and the CPU's
measured matmul peaks they are set against. The models benchmarked: the embedded default, and the SD-1.5-class model
with seeded random weights of ``contextdiff_ref.models.sd15``.

torch's counter counts a multiply-add as 2 FLOPs, over convolutions, matmuls (linear layers) and attention's two
matmuls (``scaled_dot_product_attention``); normalisations, activations and the rest are not counted."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
from diffusers import UNet2DConditionModel

from contextdiff_ref.models.adapter import ContextAdapter
from contextdiff_ref.models.model_dir import ModelComponents
from runtime.step_cache import DEFAULT_BRANCH


def _count(run: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return int(counter.get_total_flops())


def _unet_inputs(config: Any, text_length: int, batch: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Meta-device (sample, timestep, text states) of a UNet call; call inside ``torch.device("meta")``."""
    return (torch.zeros(batch, config.in_channels, height, width), torch.zeros(batch, dtype=torch.long),
            torch.zeros(batch, text_length, config.cross_attention_dim))  # fmt: skip


def unet_config_flops(unet_config: dict[str, Any], text_length: int, batch: int, height: int, width: int, *, shallow: bool = False,
                      cache_branch: int = DEFAULT_BRANCH) -> int:  # fmt: skip
    """FLOPs of one UNet call (a diffusers UNet2DConditionModel's config) on a (batch, C, height, width) sample with
    ``text_length`` text tokens; ``shallow``: step caching's shallow call at skip ``cache_branch`` instead
    (contextdiff_ref.models.step_cache)."""
    with torch.device("meta"):
        meta = UNet2DConditionModel.from_config(unet_config)
        sample, timestep, states = _unet_inputs(meta.config, text_length, batch, height, width)
        if not shallow:
            return _count(lambda: meta(sample, timestep, encoder_hidden_states=states))
        from contextdiff_ref.models.step_cache import CachedUNet

        cached = CachedUNet(meta, branch=cache_branch)
        _, feature = cached.full(sample, timestep, states)  # its shape only: not counted
        return _count(lambda: cached.shallow(sample, timestep, states, feature))


def unet_flops(components: ModelComponents, batch: int, height: int, width: int) -> int:
    """FLOPs of one UNet call on a (batch, C, height, width) sample."""
    return unet_config_flops(dict(components.unet.config), components.text_encoder.config.max_position_embeddings, batch, height, width)


def adapter_config_flops(adapter_config: dict[str, Any], text_length: int, batch: int, height: int, width: int) -> int:
    """FLOPs of one adapter call (a ContextAdapter's config) on a (batch, C, height, width) sample."""
    with torch.device("meta"):
        meta = ContextAdapter.from_config(adapter_config)
        sample = torch.zeros(batch, meta.config.in_channels, height, width)
        states = torch.zeros(batch, text_length, meta.config.cross_attention_dim)
        return _count(lambda: meta(sample, states, torch.zeros(batch, dtype=torch.long)))


def adapter_flops(components: ModelComponents, batch: int, height: int, width: int) -> int:
    """FLOPs of one adapter call on a (batch, C, height, width) sample (a step makes one, of batch 2N: r_t and r_s)."""
    return adapter_config_flops(dict(components.adapter.config), components.text_encoder.config.max_position_embeddings, batch, height, width)


def model_dir_flops(model_dir: Path, image_size: int, batch: int = 1, cache_branch: int = DEFAULT_BRANCH) -> dict[str, int]:
    """Per-call FLOPs of a model directory's UNet (full, and shallow at skip ``cache_branch``; guided batch 2·``batch``)
    and adapter (batch 2·``batch``: r_t and r_s) at ``image_size`` pixels, from its configs alone (no weights loaded)."""
    read = lambda folder: json.loads((model_dir / folder / "config.json").read_text(encoding="utf-8"))  # noqa: E731
    unet, adapter, text = read("unet"), read("adapter"), read("text_encoder")
    vae_scale = 2 ** (len(read("vae")["block_out_channels"]) - 1) if (model_dir / "vae").is_dir() else 1
    side, length = image_size // vae_scale, int(text["max_position_embeddings"])
    return {"unet": unet_config_flops(unet, length, 2 * batch, side, side), "unet_shallow": unet_config_flops(unet, length, 2 * batch, side, side, shallow=True, cache_branch=cache_branch),
            "adapter": adapter_config_flops(adapter, length, 2 * batch, side, side)}  # fmt: skip


def cpu_matmul_peaks(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """This CPU's measured dense matmul throughput (GFLOP/s; a multiply-add is 2) on torch's threads, best of
    ``repeats`` timed (n × n) @ (n × n) products after two warm-ups: f32 and bf16 by ``torch.matmul`` (oneDNN/MKL;
    bf16 is emulated, and slow, where the CPU lacks AVX512-BF16/AMX), int8 by ``torch._int_mm`` (int8 × int8 -> int32)."""
    generator = torch.Generator().manual_seed(0)
    peaks = {}
    for name, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16), ("int8", torch.int8)):
        if dtype is torch.int8:
            a, b = (torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=generator) for _ in range(2))
            product: Callable[[], Any] = lambda: torch._int_mm(a, b)  # noqa: E731
        else:
            a, b = (torch.randn(n, n, generator=generator).to(dtype) for _ in range(2))
            product = lambda: a @ b  # noqa: E731
        for _ in range(2):
            product()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            product()
            best = min(best, time.perf_counter() - start)
        peaks[name] = 2 * n**3 / best / 1e9
    return peaks

"""Seeded random LoRAs made with peft on a model directory, for tests and benchmarks: the diffusers/peft layout that
``runtime/lora.py`` reads, and optionally the model directory with the LoRA merged (peft's fuse), which an engine is
built from to compare a LoRA applied at load against."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict
from safetensors.numpy import save_file

from contextdiff_ref.models.model_dir import load_model_dir, save_model_dir
from contextdiff_ref.training.finetune import LORA_TARGETS as UNET_TARGETS

TEXT_TARGETS = ["q_proj", "v_proj"]


def _randomise(module: torch.nn.Module, seed: int, std: float) -> None:
    """Give every LoRA weight random values (peft starts B at zero: the LoRA would change nothing)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def _merge(module: torch.nn.Module) -> None:
    """peft's merge (W + scaling·B·A) into each wrapped layer, then the plain layer back in its place."""
    wrapped = [(name, layer) for name, layer in module.named_modules() if hasattr(layer, "base_layer") and hasattr(layer, "merge")]
    for name, layer in wrapped:
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, child, layer.base_layer)
    if hasattr(module, "peft_config"):
        del module.peft_config
    module._hf_peft_config_loaded = False


def make_lora(model_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, rank: int = 4, alpha: float = 2.0, seed: int = 0,
              text_encoder: bool = True, std: float = 0.3, merged_dir: str | os.PathLike[str] | None = None) -> Path:  # fmt: skip
    """Write to ``out`` a LoRA of ``rank`` on the UNet's attention projections (``UNET_TARGETS``; with ``text_encoder``
    also the text encoder's q/v) in the diffusers/peft layout (``unet.<module>.lora_A.weight``; alpha in the file's
    metadata), A and B drawn from N(0, std²) with ``seed``; with ``merged_dir`` also the model directory with it fused
    (peft, scale 1). Returns ``out``."""
    components = load_model_dir(model_dir)
    modules = {"unet": (components.unet, UNET_TARGETS)} | ({"text_encoder": (components.text_encoder, TEXT_TARGETS)} if text_encoder else {})
    tensors = {}
    for i, (prefix, (module, targets)) in enumerate(modules.items()):
        if prefix == "unet":
            module.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets))
        else:
            inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets), module)
        _randomise(module, seed + i, std=std)
        tensors |= {f"{prefix}.{k}": v.detach().numpy().copy() for k, v in get_peft_model_state_dict(module).items()}
    save_file(tensors, str(out), metadata={"lora_alpha": str(alpha), "rank": str(rank)})
    if merged_dir is not None:
        for module, _ in modules.values():
            _merge(module)
        save_model_dir(components, merged_dir)
    return Path(out)

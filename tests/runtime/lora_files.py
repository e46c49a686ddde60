"""LoRA files for the tests, made with peft on a tiny model directory: the diffusers/peft layout, its kohya/A1111
rewrite, and the model directory with the LoRA merged (peft's fuse), which an engine is built from to compare."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.numpy import save_file

from contextdiff_ref.models.model_dir import load_model_dir, save_model_dir

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # contextdiff_ref.training.finetune.LORA_TARGETS
TEXT_TARGETS = ["q_proj", "v_proj"]


def _randomise(module: torch.nn.Module, seed: int, std: float) -> None:
    """Give every LoRA weight random values (peft starts B at zero: the LoRA would change nothing)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def make_lora(model_dir: Path, out: Path, *, rank: int = 4, alpha: float = 2.0, seed: int = 0, text_encoder: bool = True,
              merged_dir: Path | None = None) -> Path:  # fmt: skip
    """A LoRA of ``rank`` on the UNet's attention projections (and the text encoder's q/v) in the diffusers/peft
    layout (``unet.<module>.lora_A.weight``; alpha in the file's metadata); with ``merged_dir`` also the model
    directory with it fused (peft, scale 1)."""
    components = load_model_dir(model_dir)
    modules = {"unet": (components.unet, UNET_TARGETS)} | ({"text_encoder": (components.text_encoder, TEXT_TARGETS)} if text_encoder else {})
    tensors = {}
    for i, (prefix, (module, targets)) in enumerate(modules.items()):
        if prefix == "unet":
            module.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets))
        else:
            from peft import inject_adapter_in_model

            inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets), module)
        _randomise(module, seed + i, std=0.3)
        tensors |= {f"{prefix}.{k}": v.detach().numpy().copy() for k, v in get_peft_model_state_dict(module).items()}
    save_file(tensors, str(out), metadata={"lora_alpha": str(alpha)})
    if merged_dir is not None:
        for module, _ in modules.values():  # peft's merge (W + scaling·B·A), then the plain layer back in its place
            wrapped = [(name, layer) for name, layer in module.named_modules() if hasattr(layer, "base_layer") and hasattr(layer, "merge")]
            for name, layer in wrapped:
                layer.merge()
                parent, _, child = name.rpartition(".")
                setattr(module.get_submodule(parent) if parent else module, child, layer.base_layer)
            if hasattr(module, "peft_config"):
                del module.peft_config
            module._hf_peft_config_loaded = False
        save_model_dir(components, merged_dir)
    return out


def to_kohya(path: Path, out: Path, alpha: float) -> Path:
    """The same LoRA in the kohya/A1111 layout: ``lora_unet_<module with _>.lora_down/lora_up.weight`` and ``.alpha``."""
    from safetensors.numpy import load_file

    prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te_text_model_"}
    tensors = {}
    for key, value in load_file(str(path)).items():
        prefix, rest = key.split(".", 1)
        module, which = rest.rsplit(".lora_", 1)
        name = prefixes[prefix] + module.replace(".", "_")
        tensors[f"{name}.{'lora_down' if which.startswith('A') else 'lora_up'}.weight"] = value
        tensors[f"{name}.alpha"] = np.array(alpha, dtype=np.float32)
    save_file(tensors, str(out))
    return out

"""LoRA files for the tests: peft's layout made on a tiny model directory (contextdiff_ref.models.random_lora, with
the merged model directory an engine is built from to compare), and its kohya/A1111 rewrite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from contextdiff_ref.models.random_lora import TEXT_TARGETS, UNET_TARGETS, make_lora  # noqa: F401  (the tests' import path)


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

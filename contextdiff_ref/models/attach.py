"""Attach a fresh context adapter to a Stable Diffusion 1.x/2.x directory in diffusers format, making a ContextDiff
model directory that generates exactly what the base model does until it is fine-tuned (the adapter's output
projection starts at zero, so r ≡ 0 and contextual DDIM is DDIM).

    python -m contextdiff_ref.models.attach --base path/to/stable-diffusion-v1-5 --out models/sd15-contextdiff-init

The base's tokenizer, text encoder, UNet and VAE are linked (hard links where the file system allows, else copied)
unchanged; its scheduler config is rewritten with the DDIM fields this package reads (a PNDM config's extra keys
dropped); ``adapter/`` is new. The base's safety checker and feature extractor are not carried over. Weights must be
safetensors (a folder holding only ``.bin`` files is refused, naming it).

Adapter size (``adapter_config_for``): patches of 2 × 2 latent pixels; width min(512, 2 × the UNet's first block
width) — 512 for SD 1.x/2.x —, width / 64 heads (at least 1), 4 blocks from width 256 on, else 2. For SD-1.5 that is
``contextdiff_ref.models.sd15.SD15_ADAPTER``: 13.6 M parameters, 2.8% of the UNet's FLOPs per call.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from contextdiff_ref.models.adapter import ContextAdapter
from contextdiff_ref.models.model_dir import MODEL_INDEX, SCHEDULER_CONFIG, _read_json, check_model_dir, check_weights, model_index
from runtime.cli import CLI_ERRORS, PLAIN, Parser, error_exit, setup_logging
from runtime.errors import InvalidArgumentError, ModelDirectoryError
from runtime.files import atomic_directory
from runtime.schedule import SchedulerConfig

logger = logging.getLogger(__name__)

LINKED = ("tokenizer", "text_encoder", "unet", "vae")  # carried over from the base unchanged


def adapter_config_for(unet_config: dict[str, Any], text_hidden_size: int, **overrides: int) -> dict[str, Any]:
    """The adapter's config for a UNet (its config.json as a dict) and text encoder width; ``overrides`` replace
    ``patch_size``, ``hidden_dim``, ``num_layers`` or ``num_heads``."""
    allowed = {"patch_size", "hidden_dim", "num_layers", "num_heads"}
    for name, value in overrides.items():
        if name not in allowed:
            raise InvalidArgumentError(name, value, f"one of {sorted(allowed)}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgumentError(name, value, "a positive integer")
    hidden = overrides.get("hidden_dim", min(512, 2 * int(unet_config["block_out_channels"][0])))
    config = dict(
        in_channels=int(unet_config["out_channels"]), cross_attention_dim=int(text_hidden_size), patch_size=2,
        hidden_dim=hidden, num_layers=4 if hidden >= 256 else 2, num_heads=max(1, hidden // 64), mlp_ratio=4,
    )  # fmt: skip
    config.update(overrides)
    if config["hidden_dim"] % config["num_heads"]:
        raise InvalidArgumentError("num_heads", config["num_heads"], f"a divisor of hidden_dim={config['hidden_dim']}")
    return config


def _link_tree(src: Path, dst: Path) -> None:
    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link_or_copy)


def attach_adapter(base: str | os.PathLike[str], out: str | os.PathLike[str], *, seed: int = 0,
                   recommended_guidance_scale: float | None = None, zero_terminal_snr: bool = False, **adapter_overrides: int) -> Path:  # fmt: skip
    """Write ``out`` (atomically): the base SD directory plus a zero-output adapter sized for it. ``zero_terminal_snr``
    writes the base's schedule rescaled to zero terminal SNR (:meth:`runtime.schedule.SchedulerConfig.with_zero_terminal_snr`):
    the model then needs fine-tuning before it generates well (``contextdiff_ref.finetune`` can also apply it)."""
    base, out = Path(base), Path(out)
    if not base.is_dir():
        raise ModelDirectoryError(f"base model directory not found: {base}. The base is a Stable Diffusion 1.x/2.x folder already on "
                                  "this disk in diffusers format (model_index.json, unet/, vae/, text_encoder/, tokenizer/, "
                                  "scheduler/, safetensors weights); nothing is downloaded")
    if out.resolve() == base.resolve():
        raise InvalidArgumentError("out", str(out), "a directory other than the base")
    _read_json(base / MODEL_INDEX)
    if (base / "adapter").exists():
        raise ModelDirectoryError(f"{base} already has an adapter/ (it is a ContextDiff model directory): nothing to attach")
    for name in ("text_encoder", "unet"):
        check_weights(base / name)
    unet_config = _read_json(base / "unet" / "config.json")
    text_config = _read_json(base / "text_encoder" / "config.json")
    latent = int(unet_config.get("out_channels", 4)) != 3
    if (base / "vae").exists():
        check_weights(base / "vae")
    elif latent:
        raise ModelDirectoryError(f"{base}: the UNet works on {unet_config.get('out_channels')}-channel latents but there is no vae/ to decode them")
    hidden = text_config.get("hidden_size")
    if unet_config.get("cross_attention_dim") != hidden:
        raise ModelDirectoryError(f"{base}: unet cross_attention_dim={unet_config.get('cross_attention_dim')} != text_encoder hidden_size={hidden}")
    scheduler = SchedulerConfig.from_dict(_read_json(base / "scheduler" / SCHEDULER_CONFIG))
    if zero_terminal_snr:
        scheduler = scheduler.with_zero_terminal_snr()
    config = adapter_config_for(unet_config, hidden, **adapter_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = ContextAdapter(**config)  # proj_out is zero: r ≡ 0
    with atomic_directory(out) as tmp:
        for name in LINKED:
            if (base / name).exists():
                _link_tree(base / name, tmp / name)
        adapter.save_pretrained(tmp / "adapter", safe_serialization=True)
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / SCHEDULER_CONFIG).write_text(json.dumps(scheduler.to_dict(), indent=2) + "\n")
        index = model_index(vae=(tmp / "vae").exists(), recommended_guidance_scale=recommended_guidance_scale)
        (tmp / MODEL_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        check_model_dir(tmp)
    n = sum(p.numel() for p in adapter.parameters())
    logger.info("attached a %.1f M-parameter adapter %s to %s: %s", n / 1e6, config, base, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m contextdiff_ref.models.attach", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="a Stable Diffusion 1.x/2.x folder on this disk in diffusers format (model_index.json, unet/, vae/, "
                             "text_encoder/, tokenizer/, scheduler/; safetensors); nothing is downloaded")
    parser.add_argument("--out", type=Path, required=True, help="ContextDiff model directory to write (replaced atomically if it exists)")
    parser.add_argument("--seed", type=int, default=0, help="adapter initialisation seed (default: %(default)s)")
    parser.add_argument("--recommended-guidance", type=float, default=None, help="guidance scale stored in model_index.json")
    parser.add_argument("--zero-terminal-snr", action="store_true",
                        help="rescale the base's schedule to zero terminal SNR (trailing spacing, v-prediction): fine-tune before use")
    for name in ("patch_size", "hidden_dim", "num_layers", "num_heads"):
        parser.add_argument(f"--adapter-{name.replace('_', '-')}", dest=name, type=int, default=None, help=f"adapter {name} (default: sized for the UNet)")
    args = parser.parse_args(argv)
    setup_logging(PLAIN)
    overrides = {k: getattr(args, k) for k in ("patch_size", "hidden_dim", "num_layers", "num_heads") if getattr(args, k) is not None}
    try:
        attach_adapter(args.base, args.out, seed=args.seed, recommended_guidance_scale=args.recommended_guidance,
                       zero_terminal_snr=args.zero_terminal_snr, **overrides)
    except CLI_ERRORS as exc:
        return error_exit(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

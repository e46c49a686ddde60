"""Fine-tuning a ContextDiff model directory on a captioned image folder (method doc §3–4): the adapter trained jointly
with the UNet (whole, or LoRA through ``peft``), the text encoder frozen unless asked, on the VAE's latents (or pixels
for a pixel-space model). Command line: ``python -m contextdiff_ref.finetune``.

Distributed through ``accelerate``: the same code runs in one process or under ``accelerate launch`` (DDP over any
number of GPUs and machines, by accelerate's config). Every rank draws the global batch's randomness from (seed,
step) and takes its slice (:meth:`ContextDiffObjective.draw`), and rank r reads entries r·b ..< (r+1)·b of the global
batch, so N processes with batch b compute what one process with batch N·b computes; DDP averages the gradients.

Resumable: ``<out>/checkpoint.pt`` (atomic) holds the trained weights (only those: frozen ones come from the model
directory), their EMA, the optimizer, the step and the number of processes; position k of the data stream depends
only on (seed, k) (:meth:`ImageFolder.positions`), so a killed run resumes exactly. At every checkpoint the ranks'
weight sums are compared (a diverged rank is an error) and recorded in the checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from contextdiff_ref.data.imagefolder import ImageFolder, open_image_folder
from contextdiff_ref.models.model_dir import ModelComponents, load_model_dir, model_limits, save_model_dir
from contextdiff_ref.training.core import TrainerCore, check_optimiser_fields, config_identity
from contextdiff_ref.training.loop import CHECKPOINT, cpu_copy, read_checkpoint, run_steps
from contextdiff_ref.training.objective import ContextDiffObjective, Draws, LossConfig
from runtime.errors import ContextDiffError, InvalidArgumentError, ModelDirectoryError
from runtime.files import atomic_write

logger = logging.getLogger(__name__)

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # the UNet's attention projections (diffusers' LoRA recipe)
LORA_FILE = "lora.safetensors"  # in the run directory at every checkpoint of a LoRA run: the EMA LoRA, as runtime/lora.py reads it
LATENT_CACHE = "latents.safetensors"
MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass(frozen=True)
class FinetuneConfig:
    """A fine-tuning run; a resumed run must match its checkpoint's config except for the fields of ``RESUMABLE``."""

    model: str  # the model directory fine-tuned (resolved path)
    data: str  # the image folder (resolved path)
    baseline: bool = False  # r ≡ 0: the same training without the adapter
    steps: int = 1000
    batch_size: int = 4  # per process
    learning_rate: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    text_dropout: float = 0.1
    snr_gamma: float | None = None
    high_noise_fraction: float = 0.0  # of each batch, t from the last 5% of timesteps (objective.HIGH_NOISE_PORTION)
    lora_rank: int = 0  # 0: the whole UNet is trained; r > 0: LoRA of rank r on its attention projections
    lora_alpha: float | None = None  # LoRA scale numerator (default: the rank, i.e. scale 1)
    train_text_encoder: bool = False
    resolution: int | None = None  # image size trained at (default: the model's)
    seed: int = 0
    mixed_precision: str = "no"  # "bf16" / "fp16" on GPUs (accelerate's autocast and loss scaling)
    gradient_checkpointing: bool = False
    cache_latents: bool = False  # encode the folder with the VAE once (<out>/latents.safetensors)
    zero_terminal_snr: bool = True  # train (and export) on the model's schedule rescaled to zero terminal SNR (method doc §5)
    posterior_sample: bool = False  # x_0 = μ + σ ε' (a sample of the VAE posterior) instead of its mean μ

    RESUMABLE = ("steps", "mixed_precision", "gradient_checkpointing", "cache_latents")
    LEGACY = {"zero_terminal_snr": False, "posterior_sample": True}  # what checkpoints written before a field existed were trained with

    def __post_init__(self) -> None:
        check_optimiser_fields(self)
        if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise InvalidArgumentError("lora_rank", self.lora_rank, "an integer >= 0 (0: train the whole UNet)")
        if self.lora_alpha is not None and not (isinstance(self.lora_alpha, (int, float)) and 0 < self.lora_alpha < math.inf):
            raise InvalidArgumentError("lora_alpha", self.lora_alpha, "a positive finite number")
        if self.resolution is not None and (isinstance(self.resolution, bool) or not isinstance(self.resolution, int) or self.resolution < 1):
            raise InvalidArgumentError("resolution", self.resolution, "a positive integer (pixels)")
        for name in ("zero_terminal_snr", "posterior_sample"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidArgumentError(name, getattr(self, name), "True or False")
        if self.mixed_precision not in MIXED_PRECISION:
            raise InvalidArgumentError("mixed_precision", self.mixed_precision, f"one of {', '.join(MIXED_PRECISION)}")
        self.loss_config()

    def loss_config(self) -> LossConfig:
        return LossConfig(use_adapter=not self.baseline, text_dropout=self.text_dropout, snr_gamma=self.snr_gamma,
                          high_noise_fraction=self.high_noise_fraction)  # fmt: skip

    def identity(self) -> dict[str, Any]:
        return config_identity(self, exclude=self.RESUMABLE)


class TrainedModel(nn.Module):
    """The trained modules under one module whose forward is the loss: what DDP wraps (so the gradients of the
    UNet, the adapter and, when trained, the text encoder are all-reduced together)."""

    def __init__(self, objective: ContextDiffObjective) -> None:
        super().__init__()
        c = objective.components
        self.unet, self.adapter, self.text_encoder = c.unet, c.adapter, c.text_encoder
        self.objective = objective

    def forward(self, x0: torch.Tensor, prompts: list[str], draws: Draws) -> torch.Tensor:
        return self.objective.loss(x0, prompts, draws).loss


class Finetuner(TrainerCore):
    """One fine-tuning run in ``out``: builds or resumes, steps, checkpoints, samples, exports."""

    def __init__(self, config: FinetuneConfig, out: Path, accelerator: Accelerator | None = None, *, load_data: bool = True) -> None:
        if accelerator is None and config.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise InvalidArgumentError("mixed_precision", "fp16", "no or bf16 on a machine without a CUDA GPU (fp16 loss scaling needs one)")
        acc = accelerator or Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available())
        self.components = c = load_model_dir(config.model)
        if config.zero_terminal_snr and not c.scheduler_config.rescale_betas_zero_snr:
            c.scheduler_config = c.scheduler_config.with_zero_terminal_snr()  # trained on, and exported with, this schedule
        if c.vae is None and c.unet.config.out_channels != 3:
            raise ModelDirectoryError(f"{config.model}: the UNet works on {c.unet.config.out_channels}-channel latents but there is no vae/ to encode images")
        for option, used in (("cache_latents", config.cache_latents), ("posterior_sample", config.posterior_sample)):
            if used and c.vae is None:
                logger.warning("%s has no effect: %s is a pixel-space model (no vae/), it trains on the images themselves", option, config.model)
        limits = model_limits(c)
        self.size = config.resolution or limits.default_height
        if self.size % limits.pixel_factor:
            raise InvalidArgumentError("resolution", self.size, f"a multiple of {limits.pixel_factor} for this model")
        self.data: ImageFolder | None = open_image_folder(config.data, self.size) if load_data else None
        factor = limits.vae_scale_factor
        self.sample_shape = (c.unet.config.out_channels, self.size // factor, self.size // factor)  # (C, h, w) of x_0
        self._prepare_modules(config)
        device = acc.device
        for module in (c.text_encoder, c.unet, c.adapter, c.vae):
            if module is not None:
                module.to(device)
        self.objective = ContextDiffObjective(c, config.loss_config(), device=device)
        self.model = acc.prepare(TrainedModel(self.objective))
        super().__init__(config, out, [c.unet, c.adapter, c.text_encoder], device, accelerator=acc)
        self.latent_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self.sample_every, self.sample_prompts = 0, ()
        state = self.resume()
        if state is not None and int(state.get("world_size", 1)) != acc.num_processes:
            raise ContextDiffError(f"{self.out / CHECKPOINT} was trained by {state.get('world_size')} processes, this run has "
                                   f"{acc.num_processes}: the data stream and batches would differ; use the same number or another --out")  # fmt: skip

    def _prepare_modules(self, config: FinetuneConfig) -> None:
        """Which weights train: the adapter (unless baseline), the UNet (whole or LoRA), the text encoder if asked."""
        c = self.components
        c.text_encoder.requires_grad_(config.train_text_encoder).train(config.train_text_encoder)
        c.adapter.requires_grad_(not config.baseline).train()
        if config.lora_rank:
            from peft import LoraConfig

            c.unet.requires_grad_(False)
            c.unet.add_adapter(LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha or config.lora_rank,
                                          init_lora_weights="gaussian", target_modules=LORA_TARGETS))  # fmt: skip
        else:
            c.unet.requires_grad_(True)
        c.unet.train()
        if config.gradient_checkpointing:
            c.unet.enable_gradient_checkpointing()
            if config.train_text_encoder:
                c.text_encoder.gradient_checkpointing_enable()

    # -- checkpoints hold the trained weights only -------------------------------------------------------------
    def module_states(self) -> list[dict[str, torch.Tensor]]:
        return [{n: p.detach() for n, p in m.named_parameters() if p.requires_grad} for m in self.modules]

    def load_module_states(self, states: list[dict[str, torch.Tensor]]) -> None:
        for module, state in zip(self.modules, states, strict=True):
            trained = {n for n, p in module.named_parameters() if p.requires_grad}
            if set(state) != trained:
                raise ContextDiffError(f"{self.out / CHECKPOINT} holds other trained weights than this run trains ({type(module).__name__})")
            module.load_state_dict(state, strict=False)

    # -- data ------------------------------------------------------------------------------------------------
    def _latent_statistics(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation (B, C, h, w) of the VAE's latent distribution of the entries ``indices``: from
        the cache (no image is read) or by encoding the images."""
        if self.config.cache_latents:
            if self.latent_cache is None:
                self.latent_cache = self._build_latent_cache()
            rows = torch.as_tensor(indices, dtype=torch.long)
            return self.latent_cache[0][rows].to(self.device), self.latent_cache[1][rows].to(self.device)
        images, _ = self.data.batch(indices)
        with torch.no_grad():
            dist = self.components.vae.encode(torch.from_numpy(images).to(self.device, self.components.vae.dtype)).latent_dist
        return dist.mean.float(), dist.std.float()

    def _build_latent_cache(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode every image once; the main process writes ``<out>/latents.safetensors`` (keyed by the folder's
        entries, the size and the VAE's config), the others wait and read it."""
        assert self.data is not None
        vae = self.components.vae
        key = hashlib.sha256(json.dumps([self.data.files, self.size, vae.config], sort_keys=True, default=str).encode()).hexdigest()
        path = self.out / LATENT_CACHE
        acc = self.accelerator
        if acc.is_main_process and not _cache_matches(path, key):
            means, stds = [], []
            for start in range(0, len(self.data), 16):
                indices = np.arange(start, min(start + 16, len(self.data)))
                images, _ = self.data.batch(indices)
                with torch.no_grad():
                    dist = vae.encode(torch.from_numpy(images).to(self.device, vae.dtype)).latent_dist
                means.append(dist.mean.float().cpu())
                stds.append(dist.std.float().cpu())
            tensors = {"mean": torch.cat(means).contiguous(), "std": torch.cat(stds).contiguous()}
            atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"key": key}))
            logger.info("cached the latents of %d images in %s", len(self.data), path)
        acc.wait_for_everyone()
        tensors = load_file(path)
        return tensors["mean"], tensors["std"]

    # -- one step --------------------------------------------------------------------------------------------
    def train_step(self) -> float:
        """One optimisation step on positions step·G ..< (step + 1)·G of the stream (G: the global batch); returns the
        loss averaged over the processes."""
        cfg, acc, c = self.config, self.accelerator, self.components
        assert self.data is not None
        b, rank = cfg.batch_size, acc.process_index
        global_batch = b * acc.num_processes
        mine = slice(rank * b, (rank + 1) * b)
        indices = self.data.positions(cfg.seed, self.step * global_batch, global_batch)[mine]
        prompts = [self.data.captions[int(i)] for i in indices]
        generator = torch.Generator(self.device).manual_seed(cfg.seed * 1_000_003 + self.step)
        shape = (global_batch, *self.sample_shape)
        draws = self.objective.draw(shape, generator).select(mine)
        if c.vae is not None:  # z = (μ − shift) · scale, or (μ + σ·ε' − shift) · scale with ε' drawn for the global batch like the rest
            mean, std = self._latent_statistics(indices)
            if cfg.posterior_sample:
                mean = mean + std * torch.randn(shape, generator=generator, device=self.device)[mine]
            x0 = (mean - (getattr(c.vae.config, "shift_factor", None) or 0.0)) * c.vae.config.scaling_factor
        else:
            x0 = torch.from_numpy(self.data.batch(indices)[0]).to(self.device)
        loss = self.model(x0, prompts, draws)
        self.optimise(loss)
        return float(acc.reduce(loss.detach(), "mean"))

    # -- checkpoints, samples, export -------------------------------------------------------------------------
    def rank_weight_sums(self) -> list[float]:
        """Every process's sum of its trained weights (float64): equal on all ranks unless one diverged."""
        total = torch.stack([p.detach().double().sum() for p in self.parameters]).sum().reshape(1).to(self.device)
        return [float(v) for v in self.accelerator.gather(total).cpu()]

    def save(self) -> None:
        """Checkpoint (after checking the ranks agree) and, every ``sample_every`` steps, the sample strip."""
        acc = self.accelerator
        sums = self.rank_weight_sums()
        if len(set(sums)) != 1:
            raise ContextDiffError(f"step {self.step}: the processes hold different weights (sums {sums}); the last checkpoint in {self.out} is intact")
        self.save_checkpoint(world_size=acc.num_processes, samples_seen=self.step * self.config.batch_size * acc.num_processes,
                             rank_weight_sums=sums)  # fmt: skip
        if self.config.lora_rank and acc.is_main_process:
            self.write_lora(self.out / LORA_FILE)
        if self.sample_every and self.sample_prompts and self.step % self.sample_every == 0 and acc.is_main_process:
            self.write_samples(list(self.sample_prompts))
        acc.wait_for_everyone()
        logger.info("step %d: checkpoint written to %s", self.step, self.out)

    def write_lora(self, path: Path) -> Path:
        """The UNet's LoRA (EMA weights) as safetensors in the diffusers/peft layout (``unet.<module>.lora_A.weight``,
        ``lora_B``; ``lora_alpha`` and ``rank`` in the metadata), written atomically: what ``runtime`` and
        ``--lora`` apply to an engine directory of the base model (only the UNet's change: a trained adapter is not in
        it; the exported model directory has both)."""
        from peft.utils import get_peft_model_state_dict

        with self.ema_weights():
            tensors = {f"unet.{k}": v.detach().float().cpu().contiguous().clone() for k, v in get_peft_model_state_dict(self.components.unet).items()}
        metadata = {"lora_alpha": str(float(self.config.lora_alpha or self.config.lora_rank)), "rank": str(self.config.lora_rank), "step": str(self.step)}
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    def ema_components(self) -> ModelComponents:
        """A plain copy of the model (CPU, eval) holding the EMA weights; LoRA merged into the UNet's weights."""
        with self.ema_weights():
            unet, adapter, text_encoder = (cpu_copy(m) for m in self.modules)
        if self.config.lora_rank:
            unet.fuse_lora()
            unet.unload_lora()
        c = self.components
        vae = cpu_copy(c.vae) if c.vae is not None else None
        return dataclasses.replace(c, unet=unet, adapter=adapter, text_encoder=text_encoder, vae=vae)

    def write_samples(self, prompts: list[str], num_inference_steps: int = 30) -> Path:
        """Images of ``prompts`` (seed 0) from the EMA weights, side by side: ``<out>/samples/step-NNNNNN.png``."""
        from contextdiff_ref.pipelines.text_to_image import ContextDiffPipeline

        images = ContextDiffPipeline(self.ema_components())(list(prompts), num_inference_steps=num_inference_steps, seed=0, progress=False).images
        strip = np.concatenate(list(images), axis=1)
        path = self.out / "samples" / f"step-{self.step:06d}.png"
        atomic_write(path, Image.fromarray(np.round(strip * 255).astype(np.uint8)).save)
        return path

    def run(self, checkpoint_every: int, log_every: int = 50, sample_every: int = 0, sample_prompts: tuple[str, ...] = ()) -> None:
        """Train to ``config.steps``; the main process logs loss, learning rate, images/s and peak GPU memory, and
        writes the sample strip of ``sample_prompts`` at every checkpoint that falls on a multiple of ``sample_every``."""
        self.sample_every, self.sample_prompts = sample_every, tuple(sample_prompts)

        def extra() -> dict[str, float]:
            record = {"lr": self.learning_rate(self.step - 1)}
            if torch.cuda.is_available():
                record["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            return record

        run_steps(self, checkpoint_every, log_every, extra=extra, log_last=True, writes_log=self.accelerator.is_main_process,
                  images_per_step=self.config.batch_size * self.accelerator.num_processes)  # fmt: skip


def _cache_matches(path: Path, key: str) -> bool:
    if not path.is_file():
        return False
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            return (f.metadata() or {}).get("key") == key
    except Exception:  # an unreadable cache is rebuilt
        return False


def export_finetuned(run_dir: str | Path, dest: str | Path) -> Path:
    """Write the EMA model directory of ``run_dir``'s checkpoint to ``dest`` (atomically; LoRA merged), a model
    directory ``build_engines.py`` takes as it is."""
    run_dir = Path(run_dir)
    state = read_checkpoint(run_dir / CHECKPOINT)
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    recorded = {**FinetuneConfig.LEGACY, **state["config"]}
    config = FinetuneConfig(**{k: v for k, v in recorded.items() if k in fields and k != "steps"}, steps=max(1, int(state["step"])))
    trainer = Finetuner(config, run_dir, Accelerator(cpu=True), load_data=False)
    logger.info("exporting step %d of %s to %s", trainer.step, run_dir, dest)
    return save_model_dir(trainer.ema_components(), dest)

"""The shapes trainer: ContextDiff (or the r ≡ 0 baseline) trained from scratch on the shapes dataset's stream.

Resumable and deterministic: batch k of the data stream and the noise/timesteps/dropout of step k depend only on
(seed, k), and ``<out>/checkpoint.pt`` (written atomically every ``checkpoint_every`` steps) holds the weights,
the EMA weights, the optimizer and the step, so rerunning the same command continues where the last run stopped.
Every checkpoint also writes ``<out>/model``: a complete model directory with the EMA weights. ``baseline``
trains the same model, data and budget with r ≡ 0 (the adapter stays at its zero initialisation).
Command line: ``python -m contextdiff_ref.train``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from contextdiff_ref.data.shapes import training_batch
from contextdiff_ref.models.model_dir import ModelComponents, save_model_dir
from contextdiff_ref.models.shapes_model import build_shapes_components
from contextdiff_ref.training.core import TrainerCore, check_optimiser_fields, config_identity
from contextdiff_ref.training.loop import CHECKPOINT, cpu_copy, read_checkpoint, run_steps
from contextdiff_ref.training.objective import ContextDiffObjective, LossConfig
from runtime.errors import ContextDiffError, InvalidArgumentError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; a resumed run must match its checkpoint's config (except ``steps``)."""

    baseline: bool = False
    steps: int = 30_000
    batch_size: int = 32
    learning_rate: float = 6e-4
    warmup_steps: int = 500
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    text_dropout: float = 0.1
    snr_gamma: float | None = None  # Min-SNR-γ weighting; None: the plain v loss
    high_noise_fraction: float = 0.25  # of each batch, t from the last 5% of timesteps (training.HIGH_NOISE_PORTION)
    seed: int = 0  # model initialisation, data stream and noise
    init_from: str | None = None  # a checkpoint to start from: its raw weights and step; fresh optimizer, EMA and warm-up

    def __post_init__(self) -> None:
        check_optimiser_fields(self)
        self.loss_config()  # checks the loss fields

    def loss_config(self) -> LossConfig:
        return LossConfig(use_adapter=not self.baseline, text_dropout=self.text_dropout, snr_gamma=self.snr_gamma,
                          high_noise_fraction=self.high_noise_fraction)  # fmt: skip

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must share with its checkpoint (``init_from`` only matters before the first one)."""
        return config_identity(self, exclude=("steps", "init_from"))


class Trainer(TrainerCore):
    """One training run in ``out``: builds or resumes, steps, checkpoints, exports the EMA model directory."""

    def __init__(self, config: TrainConfig, out: Path, device: str = "cpu") -> None:
        self.components = build_shapes_components(config.seed)
        c = self.components
        for module in (c.text_encoder, c.unet, c.adapter):
            module.to(device)
        self.objective = ContextDiffObjective(self.components, config.loss_config(), device=device)
        self.objective.train()
        # trained: UNet, text encoder and (unless baseline: r ≡ 0) the adapter, in the order checkpoints keep
        super().__init__(config, out, [c.text_encoder, c.unet, c.adapter], torch.device(device), parameters=self.objective.parameters())
        if self.resume() is None and config.init_from is not None:
            self._initialise(Path(config.init_from))

    def _modules(self) -> list[torch.nn.Module]:
        return self.modules

    def _initialise(self, path: Path) -> None:
        """Start a new phase from another run's checkpoint (e.g. with another loss weighting): its raw weights and
        step (the data stream goes on where it stopped); the optimizer, EMA and learning-rate warm-up start afresh."""
        state = read_checkpoint(path, self.device)
        if state["config"].get("baseline") != self.config.baseline:
            raise ContextDiffError(f"--init-from {path}: baseline={state['config'].get('baseline')} there, {self.config.baseline} here")
        self.load_module_states(state["modules"])
        self.ema = self.new_ema()
        self.step = self.start_step = int(state["step"])
        logger.info("initialised from %s (step %d)", path, self.step)

    def train_step(self) -> float:
        """One optimisation step on batch ``self.step`` of the stream; returns the loss."""
        cfg = self.config
        images, prompts = training_batch(cfg.seed, self.step, cfg.batch_size)
        generator = torch.Generator(self.device).manual_seed(cfg.seed * 1_000_003 + self.step)
        loss = self.objective(torch.from_numpy(images).to(self.device), prompts, generator).loss
        self.optimise(loss)
        return float(loss.detach())

    def ema_components(self) -> ModelComponents:
        """A copy of the components holding the EMA weights, on the CPU, in eval mode."""
        with self.ema_weights():
            copies = [cpu_copy(m) for m in self.modules]
        return dataclasses.replace(self.components, text_encoder=copies[0], unet=copies[1], adapter=copies[2])

    def save(self) -> None:
        """Checkpoint (atomically: temporary file + rename) and export the EMA model directory."""
        self.save_checkpoint(init_from=self.config.init_from)
        save_model_dir(self.ema_components(), self.out / "model")
        logger.info("step %d: checkpoint and model directory written to %s", self.step, self.out)

    def run(self, checkpoint_every: int, log_every: int = 50) -> None:
        """Train to ``config.steps``, logging mean loss and seconds per step to the log and ``<out>/log.jsonl``."""
        run_steps(self, checkpoint_every, log_every, extra=lambda: {"lr": self.learning_rate(self.step - 1)})


def export_model(run_dir: Path, dest: Path, recommended_guidance: float | None) -> Path:
    """Write the EMA model directory of ``run_dir``'s checkpoint to ``dest``, with the recommended guidance scale."""
    state = read_checkpoint(run_dir / CHECKPOINT)
    if recommended_guidance is not None and not (0 <= recommended_guidance < math.inf):
        raise InvalidArgumentError("--recommended-guidance", recommended_guidance, "a finite number >= 0")
    allowed = set(dataclasses.asdict(TrainConfig())) - {"steps", "init_from"}
    trainer = Trainer(TrainConfig(steps=max(1, int(state["step"])), **{k: v for k, v in state["config"].items() if k in allowed}), run_dir)
    components = dataclasses.replace(trainer.ema_components(), recommended_guidance_scale=recommended_guidance)
    logger.info("exporting step %d of %s to %s", trainer.step, run_dir, dest)
    return save_model_dir(components, dest)

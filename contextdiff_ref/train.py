"""``python -m contextdiff_ref.train --out runs/contextdiff``: train the shapes model (ContextDiff or the baseline).

Resumable and deterministic: batch k of the data stream and the noise/timesteps/dropout of step k depend only on
(seed, k), and ``<out>/checkpoint.pt`` (written atomically every ``--checkpoint-every`` steps) holds the weights,
the EMA weights, the optimizer and the step, so rerunning the same command continues where the last run stopped.
Every checkpoint also writes ``<out>/model``: a complete model directory with the EMA weights. ``--baseline``
trains the same model, data and budget with r ≡ 0 (the adapter stays at its zero initialisation).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from diffusers.training_utils import EMAModel

from contextdiff_ref.model_dir import ModelComponents, quiet_loading, save_model_dir
from contextdiff_ref.shapes import training_batch
from contextdiff_ref.shapes_model import build_shapes_components
from contextdiff_ref.training import ContextDiffObjective, LossConfig
from runtime.errors import ContextDiffError, InvalidArgumentError

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"


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
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(name, value, "a positive integer")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise InvalidArgumentError("warmup_steps", self.warmup_steps, "an integer >= 0")
        for name in ("learning_rate", "grad_clip"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise InvalidArgumentError(name, value, "a positive finite number")
        if not 0 <= self.weight_decay < 1:
            raise InvalidArgumentError("weight_decay", self.weight_decay, "a number in [0, 1)")
        if not 0 < self.ema_decay < 1:
            raise InvalidArgumentError("ema_decay", self.ema_decay, "a number in (0, 1)")
        self.loss_config()  # checks the loss fields

    def loss_config(self) -> LossConfig:
        return LossConfig(use_adapter=not self.baseline, text_dropout=self.text_dropout, snr_gamma=self.snr_gamma,
                          high_noise_fraction=self.high_noise_fraction)  # fmt: skip

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must share with its checkpoint (``init_from`` only matters before the first one)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("steps", "init_from")}


class Trainer:
    """One training run in ``out``: builds or resumes, steps, checkpoints, exports the EMA model directory."""

    def __init__(self, config: TrainConfig, out: Path, device: str = "cpu") -> None:
        self.config, self.out, self.device = config, Path(out), torch.device(device)
        self.components = build_shapes_components(config.seed)
        for module in self._modules():
            module.to(self.device)
        self.objective = ContextDiffObjective(self.components, config.loss_config(), device=self.device)
        self.objective.train()
        self.parameters = self.objective.parameters()
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.learning_rate, betas=(0.9, 0.99), weight_decay=config.weight_decay)
        self.ema = self._new_ema()
        self.step = self.start_step = 0
        if (self.out / CHECKPOINT).is_file():
            self._resume()
        elif config.init_from is not None:
            self._initialise(Path(config.init_from))

    def _modules(self) -> list[torch.nn.Module]:
        c = self.components
        return [c.text_encoder, c.unet, c.adapter]

    def _new_ema(self) -> EMAModel:
        return EMAModel(self.parameters, decay=self.config.ema_decay, use_ema_warmup=True, power=2 / 3)

    def _initialise(self, path: Path) -> None:
        """Start a new phase from another run's checkpoint (e.g. with another loss weighting): its raw weights and
        step (the data stream goes on where it stopped); the optimizer, EMA and learning-rate warm-up start afresh."""
        state = read_checkpoint(path, self.device)
        if state["config"].get("baseline") != self.config.baseline:
            raise ContextDiffError(f"--init-from {path}: baseline={state['config'].get('baseline')} there, {self.config.baseline} here")
        for module, weights in zip(self._modules(), state["modules"]):
            module.load_state_dict(weights)
        self.ema = self._new_ema()
        self.step = self.start_step = int(state["step"])
        logger.info("initialised from %s (step %d)", path, self.step)

    def _resume(self) -> None:
        path = self.out / CHECKPOINT
        if not path.is_file():
            return
        state = read_checkpoint(path, self.device)
        if state["config"] != self.config.identity():
            diff = {k: (state["config"].get(k), v) for k, v in self.config.identity().items() if state["config"].get(k) != v}
            raise ContextDiffError(f"{path} was trained with other settings {diff} (checkpoint, requested): use another --out")
        for module, weights in zip(self._modules(), state["modules"]):
            module.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])
        self.start_step = int(state.get("start_step", 0))
        truncate_log(self.out / LOG, self.step)
        logger.info("resumed %s at step %d", path, self.step)

    def learning_rate(self, step: int) -> float:
        """Linear warm-up, then constant (the EMA does the averaging)."""
        return self.config.learning_rate * min(1.0, (step - self.start_step + 1) / max(1, self.config.warmup_steps))

    def train_step(self) -> float:
        """One optimisation step on batch ``self.step`` of the stream; returns the loss."""
        cfg = self.config
        images, prompts = training_batch(cfg.seed, self.step, cfg.batch_size)
        generator = torch.Generator(self.device).manual_seed(cfg.seed * 1_000_003 + self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        x0 = torch.from_numpy(images).to(self.device)
        loss = self.objective(x0, prompts, generator).loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, cfg.grad_clip)
        self.optimizer.step()
        self.ema.step(self.parameters)
        self.step += 1
        return float(loss.detach())

    def ema_components(self) -> ModelComponents:
        """A copy of the components holding the EMA weights, on the CPU, in eval mode."""
        self.ema.store(self.parameters)
        self.ema.copy_to(self.parameters)
        try:
            c = self.components
            copies = [_cpu_copy(m) for m in self._modules()]
        finally:
            self.ema.restore(self.parameters)
        return dataclasses.replace(c, text_encoder=copies[0], unet=copies[1], adapter=copies[2])

    def save(self) -> None:
        """Checkpoint (atomically: temporary file + rename) and export the EMA model directory."""
        self.out.mkdir(parents=True, exist_ok=True)
        state = {
            "config": self.config.identity(),
            "step": self.step,
            "start_step": self.start_step,
            "init_from": self.config.init_from,
            "modules": [m.state_dict() for m in self._modules()],
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict(),
        }
        write_checkpoint(state, self.out / CHECKPOINT)
        save_model_dir(self.ema_components(), self.out / "model")
        logger.info("step %d: checkpoint and model directory written to %s", self.step, self.out)

    def run(self, checkpoint_every: int, log_every: int = 50) -> None:
        """Train to ``config.steps``, logging mean loss and seconds per step to the log and ``<out>/log.jsonl``."""
        run_steps(self, checkpoint_every, log_every, extra=lambda: {"lr": self.learning_rate(self.step - 1)})


class ResumableRun(Protocol):
    """What :func:`run_steps` drives: the shapes trainer and the video tuner."""

    out: Path
    step: int
    config: Any  # has .steps

    def train_step(self) -> float: ...

    def save(self) -> None: ...


def run_steps(run: ResumableRun, checkpoint_every: int, log_every: int, *, log_last: bool = False,
              extra: Callable[[], dict[str, float]] = dict) -> None:  # fmt: skip
    """The loop of a resumable run: step to ``run.config.steps``; every ``log_every`` steps (and at the last when
    ``log_last``) append the mean loss, seconds per step and ``extra()`` to ``<out>/log.jsonl``; checkpoint every
    ``checkpoint_every`` steps and at the last. A non-finite loss stops the run (the last checkpoint stays intact)."""
    run.out.mkdir(parents=True, exist_ok=True)
    losses: list[float] = []
    start = time.perf_counter()
    with open(run.out / LOG, "a", encoding="utf-8") as log:
        while run.step < run.config.steps:
            loss = run.train_step()
            if not math.isfinite(loss):
                raise ContextDiffError(f"loss became {loss} at step {run.step}; the last checkpoint in {run.out} is intact")
            losses.append(loss)
            if run.step % log_every == 0 or (log_last and run.step == run.config.steps):
                record = {"step": run.step, "loss": sum(losses) / len(losses), **extra(), "seconds_per_step": (time.perf_counter() - start) / len(losses)}
                log.write(json.dumps(record) + "\n")
                log.flush()
                logger.info(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
                losses, start = [], time.perf_counter()
            if run.step % checkpoint_every == 0 or run.step == run.config.steps:
                run.save()


def _logged_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def truncate_log(log: Path, step: int) -> None:
    """Drop the records of a run's ``log.jsonl`` past ``step`` (work lost when the last run stopped, redone on
    resuming) and any line a killed run left half written."""
    if not log.is_file():
        return
    lines = log.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if (logged := _logged_step(line)) is not None and logged <= step]
    if len(kept) != len(lines):
        tmp = log.with_name(f".{log.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, log)


def write_checkpoint(state: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary sibling, then rename: ``path`` is always a complete checkpoint or absent."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    if not path.is_file():
        raise ContextDiffError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # an unreadable checkpoint: say which file and why
        raise ContextDiffError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc


def _cpu_copy(module: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(module).to("cpu").eval().requires_grad_(False)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="python -m contextdiff_ref.train", description="Train the shapes model (ContextDiff or the no-adapter baseline); rerun to resume.")
    parser.add_argument("--out", type=Path, required=True, help="run directory: checkpoint.pt, log.jsonl, model/ (EMA weights)")
    parser.add_argument("--baseline", action="store_true", help="train with r ≡ 0 (no adapter): the comparison model")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="train until this many steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.learning_rate)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--snr-gamma", type=float, default=0.0, help="Min-SNR-γ loss weighting; 0: the plain loss of the prediction type (default: %(default)s)")
    parser.add_argument("--high-noise-fraction", type=float, default=defaults.high_noise_fraction,
                        help="fraction of each batch trained at the last 5%% of timesteps, where only the text tells the layout (default: %(default)s)")
    parser.add_argument("--init-from", type=Path, default=None, metavar="CHECKPOINT",
                        help="start a new phase from another run's checkpoint.pt (weights and step; fresh optimizer, EMA, warm-up)")
    parser.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (default: %(default)s)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--export", type=Path, default=None, metavar="DIR",
                        help="do not train: write the checkpoint's EMA model directory to DIR (atomically) and exit")
    parser.add_argument("--recommended-guidance", type=float, default=None,
                        help="with --export: the guidance scale stored in the model directory (callers' default)")
    return parser.parse_args(argv)


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_loading()
    try:
        if args.checkpoint_every < 1:
            raise InvalidArgumentError("--checkpoint-every", args.checkpoint_every, "a positive integer")
        if args.threads is not None:
            if args.threads < 1:
                raise InvalidArgumentError("--threads", args.threads, "a positive integer")
            torch.set_num_threads(args.threads)
        if args.export is not None:
            export_model(args.out, args.export, args.recommended_guidance)
            return 0
        config = TrainConfig(baseline=args.baseline, steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
                             snr_gamma=args.snr_gamma or None, high_noise_fraction=args.high_noise_fraction, init_from=str(args.init_from.resolve()) if args.init_from else None)
        trainer = Trainer(config, args.out, device=args.device)
        if trainer.step >= config.steps:
            logger.info("%s is already at step %d (>= --steps %d); nothing to do", args.out, trainer.step, config.steps)
            return 0
        trainer.run(args.checkpoint_every)
    except (ContextDiffError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

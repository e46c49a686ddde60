"""The trainer core every trainer builds on (the shapes trainer and fine-tuning): AdamW over the trained parameters,
their EMA, linear learning-rate warm-up, the optimisation step (through ``accelerate`` when a run is distributed or
mixed-precision), atomic checkpoints holding the config, the weights, the EMA, the optimizer and the step, and resuming
from them with the config checked. The loop that drives a trainer is :func:`contextdiff_ref.training.loop.run_steps`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch
from diffusers.training_utils import EMAModel

from contextdiff_ref.training.loop import CHECKPOINT, LOG, read_checkpoint, truncate_log, write_checkpoint
from runtime.errors import ContextDiffError, InvalidArgumentError

logger = logging.getLogger(__name__)


class OptimisedConfig(Protocol):
    """The fields of a trainer's config the core reads; ``identity()``: what a resumed run must share."""

    steps: int
    learning_rate: float
    warmup_steps: int
    weight_decay: float
    grad_clip: float
    ema_decay: float

    def identity(self) -> dict[str, Any]: ...


def check_optimiser_fields(config: Any) -> None:
    """Raise InvalidArgumentError naming the first out-of-range optimisation field of a trainer's config."""
    for name in ("steps", "batch_size"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgumentError(name, value, "a positive integer")
    if isinstance(config.warmup_steps, bool) or not isinstance(config.warmup_steps, int) or config.warmup_steps < 0:
        raise InvalidArgumentError("warmup_steps", config.warmup_steps, "an integer >= 0")
    for name in ("learning_rate", "grad_clip"):
        value = getattr(config, name)
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 < value < math.inf):
            raise InvalidArgumentError(name, value, "a positive finite number")
    if not 0 <= config.weight_decay < 1:
        raise InvalidArgumentError("weight_decay", config.weight_decay, "a number in [0, 1)")
    if not 0 < config.ema_decay < 1:
        raise InvalidArgumentError("ema_decay", config.ema_decay, "a number in (0, 1)")


def config_identity(config: Any, exclude: tuple[str, ...] = ("steps",)) -> dict[str, Any]:
    """A dataclass config's fields minus those a resumed run may change."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in exclude}


class TrainerCore:
    """Optimizer, EMA, warm-up, optimisation step, checkpoint and resume for the trained parameters of ``modules``.

    ``modules`` are the modules whose weights a checkpoint holds, in a fixed order; the optimizer and the EMA see
    their parameters with ``requires_grad`` (frozen weights and LoRA base weights are not trained). Subclasses
    override :meth:`module_states` / :meth:`load_module_states` to store less than every module's whole state dict.
    With an ``accelerator`` (accelerate), the optimizer is prepared by it and its backward and gradient clipping are
    used (gradients all-reduced across processes, mixed-precision loss scaling)."""

    def __init__(self, config: OptimisedConfig, out: Path, modules: list[torch.nn.Module], device: torch.device,
                 accelerator: Any = None, parameters: list[torch.nn.Parameter] | None = None) -> None:  # fmt: skip
        """``parameters``: the trained ones in the order the optimizer and EMA states keep (default: the modules'
        parameters with ``requires_grad``, in module order)."""
        self.config, self.out, self.device, self.accelerator = config, Path(out), device, accelerator
        self.modules = modules
        if parameters is None:
            parameters = [p for m in modules for p in m.parameters() if p.requires_grad]
        self.parameters = parameters
        if not self.parameters:
            raise ContextDiffError("nothing to train: every parameter is frozen")
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.learning_rate, betas=(0.9, 0.99), weight_decay=config.weight_decay)
        if accelerator is not None:
            self.optimizer = accelerator.prepare(self.optimizer)
        self.ema = self.new_ema()
        self.step = self.start_step = 0

    def new_ema(self) -> EMAModel:
        return EMAModel(self.parameters, decay=self.config.ema_decay, use_ema_warmup=True, power=2 / 3)

    # -- what a checkpoint holds ---------------------------------------------------------------------------
    def module_states(self) -> list[dict[str, torch.Tensor]]:
        return [m.state_dict() for m in self.modules]

    def load_module_states(self, states: list[dict[str, torch.Tensor]]) -> None:
        for module, weights in zip(self.modules, states, strict=True):
            module.load_state_dict(weights)

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "config": self.config.identity(),
            "step": self.step,
            "start_step": self.start_step,
            "modules": self.module_states(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict(),
        }

    def save_checkpoint(self, **extra: Any) -> None:
        """Write ``<out>/checkpoint.pt`` atomically (on the main process only when distributed)."""
        if self.accelerator is not None and not self.accelerator.is_main_process:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        write_checkpoint({**self.checkpoint_state(), **extra}, self.out / CHECKPOINT)

    def resume(self) -> dict[str, Any] | None:
        """Continue from ``<out>/checkpoint.pt`` if there is one (its config must equal this run's, ``steps`` aside);
        returns the checkpoint's state, or None for a fresh run."""
        path = self.out / CHECKPOINT
        if not path.is_file():
            return None
        state = read_checkpoint(path, self.device)
        recorded = {**getattr(self.config, "LEGACY", {}), **state["config"]}  # fields added since: what such runs used
        if recorded != self.config.identity():
            diff = {k: (recorded.get(k), v) for k, v in self.config.identity().items() if recorded.get(k) != v}
            diff.update({k: (v, None) for k, v in recorded.items() if k not in self.config.identity()})
            raise ContextDiffError(f"{path} was trained with other settings {diff} (checkpoint, requested): use another --out")
        self.load_module_states(state["modules"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])
        self.start_step = int(state.get("start_step", 0))
        if self.accelerator is None or self.accelerator.is_main_process:
            truncate_log(self.out / LOG, self.step)
        logger.info("resumed %s at step %d", path, self.step)
        return state

    # -- optimisation ---------------------------------------------------------------------------------------
    def learning_rate(self, step: int) -> float:
        """Linear warm-up, then constant (the EMA does the averaging)."""
        return self.config.learning_rate * min(1.0, (step - self.start_step + 1) / max(1, self.config.warmup_steps))

    def optimise(self, loss: torch.Tensor) -> None:
        """One optimisation step on ``loss`` at ``self.step``'s learning rate: backward, clip, AdamW, EMA, step + 1."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        if self.accelerator is not None:
            self.accelerator.backward(loss)
            self.accelerator.clip_grad_norm_(self.parameters, self.config.grad_clip)
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.parameters, self.config.grad_clip)
        self.optimizer.step()
        self.ema.step(self.parameters)
        self.step += 1

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Within the block the trained parameters hold their EMA; restored after."""
        self.ema.store(self.parameters)
        self.ema.copy_to(self.parameters)
        try:
            yield
        finally:
            self.ema.restore(self.parameters)

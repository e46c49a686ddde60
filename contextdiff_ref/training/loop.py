"""The loop of a resumable training run, shared by every trainer (the shapes trainer, fine-tuning, one-shot video
tuning): stepping to ``config.steps``, ``log.jsonl`` records, atomic checkpoints, and truncating the log of work a
killed run lost.

A run directory holds ``checkpoint.pt`` (written atomically: a temporary sibling renamed into place, so it is always
a complete checkpoint or absent) and ``log.jsonl`` (one record per ``log_every`` steps)."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from runtime.errors import ContextDiffError
from runtime.files import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"


class ResumableRun(Protocol):
    """What :func:`run_steps` drives: the shapes trainer, fine-tuning and the video tuner."""

    out: Path
    step: int
    config: Any  # has .steps

    def train_step(self) -> float: ...

    def save(self) -> None: ...


def run_steps(run: ResumableRun, checkpoint_every: int, log_every: int, *, log_last: bool = False,
              extra: Callable[[], dict[str, float]] = dict, writes_log: bool = True, images_per_step: int | None = None) -> None:  # fmt: skip
    """The loop of a resumable run: step to ``run.config.steps``; every ``log_every`` steps (and at the last when
    ``log_last``) append the mean loss, ``extra()``, seconds per step (and images per second given
    ``images_per_step``) to ``<out>/log.jsonl`` — unless ``writes_log`` is false (a data-parallel rank other than the
    main one); checkpoint every ``checkpoint_every`` steps and at the last. A non-finite loss stops the run (the last
    checkpoint stays intact)."""
    run.out.mkdir(parents=True, exist_ok=True)
    losses: list[float] = []
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(open(run.out / LOG, "a", encoding="utf-8")) if writes_log else None
        while run.step < run.config.steps:
            loss = run.train_step()
            if not math.isfinite(loss):
                raise ContextDiffError(f"loss became {loss} at step {run.step}; the last checkpoint in {run.out} is intact")
            losses.append(loss)
            if run.step % log_every == 0 or (log_last and run.step == run.config.steps):
                seconds = (time.perf_counter() - start) / len(losses)
                record = {"step": run.step, "loss": sum(losses) / len(losses), **extra(), "seconds_per_step": seconds}
                if images_per_step is not None:
                    record["images_per_second"] = images_per_step / seconds
                if log is not None:
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
        atomic_write_text(log, "".join(line + "\n" for line in kept))


def write_checkpoint(state: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary sibling, then rename: ``path`` is always a complete checkpoint or absent."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    if not path.is_file():
        raise ContextDiffError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # an unreadable checkpoint: say which file and why
        raise ContextDiffError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc


def cpu_copy(module: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(module).to("cpu").eval().requires_grad_(False)

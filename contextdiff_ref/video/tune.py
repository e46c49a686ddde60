"""One-shot tuning of a video model on its source video (method doc §7): the objective of §3–4 on the video alone,
training the temporal layers, the attention query projections and (ContextDiff) the video adapter; ``baseline``
trains the same with r ≡ 0 (plain Tune-A-Video).

Each step draws ``videos_per_step`` noisy copies of the video, one timestep and one text-dropout draw per copy
(shared by its frames). Resumable like the shapes trainer: ``<out>/checkpoint.pt`` (written atomically) holds the
tuned modules, the optimizer and the step; the noise of step k depends only on (seed, k); the run's identity (source
model, video digest, prompt, settings) must match to resume. Every checkpoint also writes ``<out>/model``, the
tuned video model directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contextdiff_ref.models.model_dir import load_model_dir
from contextdiff_ref.training.loop import CHECKPOINT, LOG, read_checkpoint, run_steps, truncate_log, write_checkpoint
from contextdiff_ref.training.objective import ContextDiffObjective, LossConfig
from contextdiff_ref.video.model_dir import VideoComponents, inflate, is_video_model_dir, load_video_model_dir, save_video_model_dir
from contextdiff_ref.video.pipeline import VideoEditPipeline
from runtime.errors import ContextDiffError, InvalidArgumentError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneConfig:
    """Everything that defines a tuning run; a resumed run must match its checkpoint's (except ``steps``)."""

    baseline: bool = False
    steps: int = 300
    learning_rate: float = 1e-3
    videos_per_step: int = 2
    text_dropout: float = 0.1  # the edit samples with classifier-free guidance: keep the unconditional branch tuned too
    grad_clip: float = 1.0
    seed: int = 0
    words: tuple[str, ...] = ()  # added to the tokenizer when inflating an image model (contextdiff_ref.video.model_dir.add_words)

    def __post_init__(self) -> None:
        for name in ("steps", "videos_per_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(name, value, "a positive integer")
        for name in ("learning_rate", "grad_clip"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise InvalidArgumentError(name, value, "a positive finite number")
        LossConfig(text_dropout=self.text_dropout)

    def identity(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items() if k != "steps"}


def load_for_tuning(model: Path, num_frames: int, config: TuneConfig) -> VideoComponents:
    """A video model directory as it is, or an image model directory inflated to ``num_frames``."""
    if is_video_model_dir(model):
        video = load_video_model_dir(model)
        if video.num_frames != num_frames:
            raise InvalidArgumentError("video", f"{num_frames} frames", f"{video.num_frames} frames (the model's num_frames, {model})")
        if video.contextual == config.baseline:
            raise ContextDiffError(f"{model} is a {'ContextDiff' if video.contextual else 'baseline (r ≡ 0)'} video model; "
                                   f"tune it {'without' if video.contextual else 'with'} --baseline")  # fmt: skip
        return video
    return inflate(load_model_dir(model), num_frames, contextual=not config.baseline, words=config.words, seed=config.seed)


class VideoTuner:
    """One-shot tuning run in ``out`` on ``video`` (F, H, W, 3) float32 in [0, 1] with ``prompt``."""

    def __init__(self, config: TuneConfig, model: Path, video: np.ndarray, prompt: str, out: Path, device: str = "cpu") -> None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidArgumentError("prompt", prompt, "a non-empty text describing the source video")
        self.config, self.out, self.device = config, Path(out), torch.device(device)
        self.video = load_for_tuning(Path(model), int(np.shape(video)[0]), config)
        pipe = VideoEditPipeline(self.video, device=self.device)
        frames = pipe.check_video(video)  # the frames an edit would take
        x0 = torch.from_numpy(pipe.pipe.encode(frames)).to(self.device)  # (F, C, h, w)
        self.x0 = x0.repeat(config.videos_per_step, 1, 1, 1)  # the batch of every step: the video's noisy copies
        self.prompts = [prompt] * self.video.num_frames * config.videos_per_step
        self.identity = {"config": config.identity(), "model": str(Path(model).resolve()), "prompt": prompt,
                         "video_sha256": hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()}  # fmt: skip
        self.objective = ContextDiffObjective(self.video.components, LossConfig(use_adapter=not config.baseline, text_dropout=config.text_dropout), self.device)
        self.parameters = self.video.tuned_parameters()
        for p in self.parameters:
            p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.learning_rate, weight_decay=0.0)
        self.step = 0
        if (self.out / CHECKPOINT).is_file():
            self._resume()

    def _modules(self) -> list[torch.nn.Module]:
        return [self.video.video_unet, self.video.video_adapter]

    def _resume(self) -> None:
        path = self.out / CHECKPOINT
        state = read_checkpoint(path, self.device)
        if state.get("identity") != self.identity:
            old = state.get("identity", {})
            diff = {k: (old.get(k), v) for k, v in self.identity.items() if old.get(k) != v}
            raise ContextDiffError(f"{path} was tuned with other settings {diff} (checkpoint, requested): use another --out")
        for module, weights in zip(self._modules(), state["modules"]):
            module.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        truncate_log(self.out / LOG, self.step)
        logger.info("resumed %s at step %d", path, self.step)

    def train_step(self) -> float:
        cfg = self.config
        generator = torch.Generator(self.device).manual_seed(cfg.seed * 1_000_003 + self.step)
        for module in self._modules():
            module.train()
        loss = self.objective(self.x0, self.prompts, generator, group=self.video.num_frames).loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        return float(loss.detach())

    def save(self) -> None:
        """Checkpoint (atomically) and write the tuned video model directory ``<out>/model`` (atomically)."""
        self.out.mkdir(parents=True, exist_ok=True)
        state = {"identity": self.identity, "step": self.step, "modules": [m.state_dict() for m in self._modules()],
                 "optimizer": self.optimizer.state_dict()}  # fmt: skip
        write_checkpoint(state, self.out / CHECKPOINT)
        for module in self._modules():
            module.eval()
        save_video_model_dir(self.video, self.out / "model")
        logger.info("step %d: checkpoint and video model directory written to %s", self.step, self.out)

    def run(self, checkpoint_every: int = 100, log_every: int = 25) -> Path:
        """Tune to ``config.steps``; returns the model directory."""
        run_steps(self, checkpoint_every, log_every, log_last=True)
        if not (self.out / "model").is_dir():
            self.save()
        return self.out / "model"

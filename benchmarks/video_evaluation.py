"""``python -m benchmarks.video_evaluation --out RUN``: video editing on the moving-shapes clips, ContextDiff vs
the r ≡ 0 baseline (method doc §7, "Measures"), reference PyTorch.

For each of ``--clips`` source clips (:func:`contextdiff_ref.video.data.evaluation_clips`) and each method, one-shot
tune the image model on the clip (:class:`contextdiff_ref.video.tune.VideoTuner`; the baseline tunes and edits with
r ≡ 0), then make its ``--edits`` fixed edits (:func:`clip_edits`: the first object's colour and shape) with
:class:`VideoEditPipeline`. Every edit is scored per frame (:func:`score_clip`); the report gives, per method, edit
accuracy and structure kept over all frames, the mean temporal change, and per measure the paired ContextDiff −
baseline difference over (clip, edit) pairs with its 95% interval.

``--blend-dilation D`` confines each edit to the source clip's foreground grown by D pixels (local blending,
:class:`runtime.sampling.LocalBlend`; the region comes from the source frames, never from the edit's target);
``--blend-region box`` grows each source object to its bounding box first (:func:`source_region`), so an edit to
another shape of the same size has room (a triangle's foreground leaves no room for a circle's upper half).
``--region-noise L`` (with blending) mixes fresh noise into the inverted x_T inside the region
(:meth:`runtime.frame_folded_editing.FrameFoldedEditing.sample`): the inversion carries the source object's outline, and an
edit to another shape inherits it (a triangle edited into a circle comes out a rounded square); 1 draws the region anew
while the blend still holds the rest to the source. ``--clip-seed S`` draws another set of source clips (settings
chosen on one set can be checked on another); ``--clip-set unseen`` keeps only clips whose caption and whose edits'
captions are none of the embedded video base's training clips' (:func:`contextdiff_ref.video.build_base.base_clip_captions`)
— seed 0's clips are all such (the base was built holding them out), another seed's are not, and an edit into a clip
the base trained on is easier.

``--engine runtime`` makes the edits through exported engines instead: each tuned model is built into an engine
directory (ONNX Runtime, fp32) and edited with ``runtime.VideoEditor`` — the edit metrics measured through the
deployed path (a run directory holds one engine's edits).

Resumable: each (clip, method) writes its edited frames to ``RUN/edits/<clip>-<method>.npz`` atomically once all its
edits are made, and its tuning run (itself resumable) is removed then; a rerun with the same settings
(``RUN/settings.json``; ``--clips`` may grow or shrink) skips what is there and scores everything again from the
stored frames.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.harness import render_table
from contextdiff_ref.data.alignment import THRESHOLD
from contextdiff_ref.video.data import MOTION_WORDS, Clip, clip_caption, clip_edits, evaluation_clips, render_clip
from contextdiff_ref.video.metrics import ClipScore, paired_clip_difference, score_clip, summarize_clips
from runtime.cli import CLI_ERRORS, TIMED, Parser, error_exit, setup_logging
from runtime.errors import ContextDiffError, InvalidArgumentError
from runtime.files import atomic_write, atomic_write_json
from runtime.frame_folded_editing import validate_region_noise

logger = logging.getLogger(__name__)

METHODS = ("contextdiff", "baseline")
ENGINES = ("reference", "runtime")
REGIONS = ("foreground", "box")
CLIP_SETS = ("all", "unseen")


@dataclass(frozen=True)
class EditSettings:
    """Everything that defines an evaluation run (a resumed run must match)."""

    clips: int = 24
    edits: int = 2
    tune_steps: int = 20
    learning_rate: float = 1e-3
    num_inference_steps: int = 50
    strength: float = 0.93
    guidance_scale: float = 15.0
    negative: str = "source"  # the guidance's unconditional prompt: "source" (the source caption) or "empty"
    clip_seed: int = 0
    clip_set: str = "all"  # "all" clips of the seed's draw, or only those "unseen" by the embedded base (source_clips)
    engine: str = "reference"  # who edits: "reference" (VideoEditPipeline) or "runtime" (exported engines, runtime.VideoEditor)
    blend_dilation: int | None = None  # local blending: None off; d >= 0 confines each edit to the source's foreground grown by d px
    blend_region: str = "foreground"  # local blending's region before growing: the source's "foreground", or each object's "box"
    region_noise: float = 0.0  # with blending: fraction λ of fresh noise mixed into x_T inside the region (0: the inversion alone)

    def __post_init__(self) -> None:
        for name in ("clips", "edits", "tune_steps", "num_inference_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(name, value, "a positive integer")
        if isinstance(self.clip_seed, bool) or not isinstance(self.clip_seed, int) or self.clip_seed < 0:
            raise InvalidArgumentError("clip_seed", self.clip_seed, "an integer >= 0")
        for name in ("learning_rate", "guidance_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf") or (name == "learning_rate" and value == 0):
                raise InvalidArgumentError(name, value, "a positive finite number" if name == "learning_rate" else "a finite number >= 0")
        n = self.num_inference_steps
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float)) or not 0 < self.strength <= 1 or int(n * self.strength) < 1:
            raise InvalidArgumentError("strength", self.strength, f"a number in [1/num_inference_steps, 1] = [{1 / n:g}, 1]")
        if self.negative not in ("source", "empty"):
            raise InvalidArgumentError("negative", self.negative, "'source' or 'empty'")
        if self.clip_set not in CLIP_SETS:
            raise InvalidArgumentError("clip_set", self.clip_set, f"one of {CLIP_SETS}")
        if self.engine not in ENGINES:
            raise InvalidArgumentError("engine", self.engine, f"one of {ENGINES}")
        d = self.blend_dilation
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 0):
            raise InvalidArgumentError("blend_dilation", d, "None (no local blending) or an integer >= 0 (pixels)")
        if self.blend_region not in REGIONS:
            raise InvalidArgumentError("blend_region", self.blend_region, f"one of {REGIONS}")
        validate_region_noise(self.region_noise, d is not None, "blend_dilation")


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    atomic_write(path, lambda tmp: np.savez_compressed(tmp, **arrays))


def _check_settings(run: Path, settings: EditSettings, model: Path) -> None:
    """A run directory holds one evaluation's settings; ``clips`` may differ (the clips are a prefix-stable draw, so a
    run with more clips extends one with fewer, and one with fewer scores the first of them)."""
    wanted = dataclasses.asdict(settings) | {"model": str(Path(model).resolve())}
    path = run / "settings.json"
    if path.is_file():
        found = {"engine": "reference", "blend_dilation": None, "blend_region": "foreground", "region_noise": 0.0, "clip_set": "all"} | json.loads(path.read_text()) | {"clips": settings.clips}  # older runs: their defaults
        if found != wanted:
            diff = {k: (found.get(k), v) for k, v in wanted.items() if found.get(k) != v}
            raise ContextDiffError(f"{run} holds an evaluation with other settings {diff} (stored, requested): use another --out")
        return
    atomic_write_json(path, wanted)


def edit_clip_with(model: Path, clip: Clip, edits: list[Clip], method: str, settings: EditSettings, work: Path,
                   device: str = "cpu") -> np.ndarray:  # fmt: skip
    """Tune on ``clip`` in ``work`` and edit it into each of ``edits``: (E, F, H, W, 3) float32 in [0, 1]."""
    from contextdiff_ref.video.pipeline import VideoEditPipeline
    from contextdiff_ref.video.tune import TuneConfig, VideoTuner

    source, caption = render_clip(clip), clip_caption(clip)
    config = TuneConfig(baseline=method == "baseline", steps=settings.tune_steps, learning_rate=settings.learning_rate, words=MOTION_WORDS)
    tuner = VideoTuner(config, model, source, caption, work, device=device)
    tuned = tuner.run(checkpoint_every=settings.tune_steps)
    if settings.engine == "runtime":  # the tuned model directory -> engines -> runtime.VideoEditor
        from export.build import BuildOptions, build_engine_dir
        from runtime.options import BuildBackend, Precision
        from runtime.video_editor import VideoEditor

        build_engine_dir(tuned, work / "engines", BuildOptions(backend=BuildBackend.ONNXRUNTIME, precision=Precision.FP32))
        pipe = VideoEditor.from_dir(work / "engines", backend="onnxruntime-cpu")
    else:
        pipe = VideoEditPipeline(tuner.video, device=device)
    negative = caption if settings.negative == "source" else None
    mask = None if settings.blend_dilation is None else source_region(source, settings.blend_dilation, settings.blend_region)
    trajectory: list[np.ndarray] | None = None if mask is None else []
    x_T = pipe.invert(source, caption, settings.num_inference_steps, strength=settings.strength, progress=False, trajectory=trajectory)  # once for all edits
    return np.stack([
        pipe.sample(x_T, clip_caption(e), settings.num_inference_steps, settings.guidance_scale, seed=0, strength=settings.strength,
                    negative_prompt=negative, mask=mask, region_noise=settings.region_noise, trajectory=trajectory, progress=False)
        for e in edits
    ])  # fmt: skip


def source_region(frames: np.ndarray, dilation: int, region: str = "foreground") -> np.ndarray:
    """The local-blend region (F, H, W) bool of a moving-shapes clip (F, H, W, 3): the source's objects, never the
    edit's target.

    1. foreground: the pixels whose largest channel is > 0.5 (the dataset reader's threshold);
    2. ``region="box"``: each object on each frame (8-connected component of the foreground) replaced by its
       bounding box — room for any shape of its size at its centre;
    3. grown by ``dilation`` pixels (:func:`runtime.video_io.dilate`).
    """
    from runtime.video_io import dilate

    if region not in REGIONS:
        raise InvalidArgumentError("region", region, f"one of {REGIONS}")
    mask = frames.max(axis=-1) > THRESHOLD  # 1.
    if region == "box":  # 2.
        from scipy import ndimage

        boxes = np.zeros_like(mask)
        for frame, out in zip(mask, boxes):
            labels, _ = ndimage.label(frame, structure=np.ones((3, 3), dtype=bool))
            for box in ndimage.find_objects(labels):
                out[box] = True
        mask = boxes
    return dilate(mask, dilation)  # 3.


def source_clips(settings: EditSettings) -> list[Clip]:
    """The run's ``clips`` source clips: the first of the ``clip_seed`` draw (:func:`evaluation_clips`), with
    ``clip_set="unseen"`` only those whose caption and whose ``edits`` edits' captions the embedded base never trained
    on (the draw continued until there are enough; prefix-stable like the draw)."""
    if settings.clip_set == "all":
        return evaluation_clips(settings.clips, settings.clip_seed)
    from contextdiff_ref.video.build_base import base_clip_captions

    seen, limit = base_clip_captions(), 100 * settings.clips
    drawn = evaluation_clips(limit, settings.clip_seed)
    unseen = [c for c in drawn if not {clip_caption(x) for x in (c, *clip_edits(c, settings.edits))} & seen][: settings.clips]
    if len(unseen) < settings.clips:
        raise InvalidArgumentError("clips", settings.clips, f"at most {len(unseen)} with clip_set='unseen' (of {limit} drawn clips)")
    return unseen


def run_edits(model: Path, run: Path, settings: EditSettings, device: str = "cpu") -> dict[str, np.ndarray]:
    """Make (or load) every method's edits: method -> (clips, E, F, H, W, 3) float32."""
    _check_settings(run, settings, model)
    clips = source_clips(settings)
    out: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    for i, clip in enumerate(clips):
        for method in METHODS:
            path = run / "edits" / f"{i:02d}-{method}.npz"
            if not path.is_file():
                start = time.perf_counter()
                work = run / "tune" / f"{i:02d}-{method}"
                frames = edit_clip_with(model, clip, clip_edits(clip, settings.edits), method, settings, work, device)
                _write_npz(path, frames=frames)
                shutil.rmtree(work, ignore_errors=True)
                logger.info("clip %d/%d %s: %.1f s", i + 1, len(clips), method, time.perf_counter() - start)
            out[method].append(np.load(path)["frames"])
    return {m: np.stack(v) for m, v in out.items()}


def score_edits(frames: dict[str, np.ndarray], settings: EditSettings) -> dict[str, Any]:
    """The report (JSON-ready): per method the summary over all (clip, edit) pairs, and the paired differences."""
    clips = source_clips(settings)
    targets = [e for clip in clips for e in clip_edits(clip, settings.edits)]
    scores: dict[str, list[ClipScore]] = {
        m: [score_clip(f, t) for f, t in zip(frames[m].reshape(-1, *frames[m].shape[2:]), targets)] for m in METHODS
    }
    return {
        "settings": dataclasses.asdict(settings),
        "methods": {m: summarize_clips(s) for m, s in scores.items()},
        "source_temporal_change": summarize_clips([score_clip(render_clip(c), c) for c in clips])["temporal_change"],  # the motion itself
        "difference": paired_clip_difference(scores["contextdiff"], scores["baseline"]),
        "pairs": len(targets),
    }


def markdown_table(report: dict[str, Any]) -> str:
    rows = [[method, m["clips"], m["frames"], f"{m['edit_accuracy']:.1%}", f"{m['structure_kept']:.1%}", f"{m['temporal_change']:.4f}"]
            for method, m in report["methods"].items()]
    d = report["difference"]
    cells = [f"{d[k]['difference']:+.1%} [{d[k]['ci_low']:+.1%}, {d[k]['ci_high']:+.1%}]" for k in ("edit_accuracy", "structure_kept")]
    t = d["temporal_change"]
    cells.append(f"{t['difference']:+.4f} [{t['ci_low']:+.4f}, {t['ci_high']:+.4f}]")
    rows.append(["ContextDiff − baseline (95% CI)", f"{report['pairs']} pairs", "", *cells])
    rows.append(["source clips (for reference)", "", "", "", "", f"{report['source_temporal_change']:.4f}"])
    return render_table(["method", "clips × edits", "frames", "edit accuracy", "structure kept", "temporal change"], rows)


def write_strip(frames: dict[str, np.ndarray], settings: EditSettings, path: Path, clip_index: int = 0, scale: int = 4) -> None:
    """GIF (or mp4) of one clip: source | each edit by ContextDiff | the same edit by the baseline, side by side."""
    from runtime.video_io import write_video

    clip = source_clips(settings)[clip_index]
    panels = [render_clip(clip)]
    for e in range(frames["contextdiff"].shape[1]):
        panels += [frames["contextdiff"][clip_index, e], frames["baseline"][clip_index, e]]
    gap = np.ones((*panels[0].shape[:2], 1, 3), np.float32)  # (F, H, 1, 3): a white column between panels
    strip = np.concatenate([p if k == 0 else np.concatenate([gap, p], axis=2) for k, p in enumerate(panels)], axis=2)
    write_video(path, strip.repeat(scale, axis=1).repeat(scale, axis=2), fps=4)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = EditSettings()
    p = Parser(prog="python -m benchmarks.video_evaluation", description="Video editing on moving-shapes clips: ContextDiff vs the r ≡ 0 baseline.")
    p.add_argument("--out", type=Path, required=True, help="run directory (resumable): settings.json, edits/")
    p.add_argument("--model", type=Path, default=None, help="image model directory to inflate and tune (default: the embedded video base, contextdiff_ref/models/shapes-video-base)")
    p.add_argument("--clips", type=int, default=d.clips, help="source clips (default: %(default)s)")
    p.add_argument("--clip-seed", type=int, default=d.clip_seed,
                   help="seed of the clip draw: another seed is another set of source clips, e.g. to check settings chosen on seed 0 (default: %(default)s)")
    p.add_argument("--clip-set", choices=CLIP_SETS, default=d.clip_set,
                   help="all clips of the draw, or only those whose caption and edits' captions the embedded video base never trained on (default: %(default)s)")
    p.add_argument("--edits", type=int, default=d.edits, help="edits per clip (default: %(default)s)")
    p.add_argument("--tune-steps", type=int, default=d.tune_steps, help="one-shot tuning steps per clip and method (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.learning_rate, help="tuning learning rate (default: %(default)s)")
    p.add_argument("--steps", type=int, default=d.num_inference_steps, help="DDIM steps (default: %(default)s)")
    p.add_argument("--strength", type=float, default=d.strength, help="fraction of the steps inverted and resampled (default: %(default)s)")
    p.add_argument("--guidance", type=float, default=d.guidance_scale, help="guidance scale (default: %(default)s)")
    p.add_argument("--negative", choices=["source", "empty"], default=d.negative, help="the guidance's unconditional prompt (default: %(default)s)")
    p.add_argument("--engine", choices=ENGINES, default=d.engine,
                   help="who edits: the reference pipeline, or engines built from each tuned model and run by runtime.VideoEditor (default: %(default)s)")
    p.add_argument("--blend-dilation", type=int, default=None,
                   help="local blending: confine each edit to the source clip's foreground grown by this many pixels (default: off)")
    p.add_argument("--blend-region", choices=REGIONS, default=d.blend_region,
                   help="local blending's region before growing: the source's foreground, or each object's bounding box (default: %(default)s)")
    p.add_argument("--region-noise", type=float, default=d.region_noise,
                   help="with --blend-dilation: fraction of fresh noise mixed into the inverted x_T inside the region, 0 to 1 (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    p.add_argument("--strip", type=Path, default=None, help="write clip 0 as source | ContextDiff edit | baseline edit, per edit (.gif or .mp4)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(TIMED)
    for noisy in ("contextdiff_ref.video.tune", "contextdiff_ref.models.model_dir", "diffusers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from contextdiff_ref.models.defaults import default_video_base_dir
    from contextdiff_ref.models.model_dir import check_model_dir, quiet_loading

    quiet_loading()
    try:
        settings = EditSettings(clips=args.clips, edits=args.edits, tune_steps=args.tune_steps, learning_rate=args.lr, num_inference_steps=args.steps,
                                strength=args.strength, guidance_scale=args.guidance, negative=args.negative, engine=args.engine, clip_seed=args.clip_seed, clip_set=args.clip_set,
                                blend_dilation=args.blend_dilation, blend_region=args.blend_region, region_noise=args.region_noise)  # fmt: skip
        model = args.model if args.model is not None else default_video_base_dir()
        check_model_dir(model)
        frames = run_edits(Path(model), args.out, settings, args.device)
        report = score_edits(frames, settings) | {"model": str(model), "device": args.device}
        if args.json is not None:
            atomic_write_json(args.json, report)
        if args.strip is not None:
            write_strip(frames, settings, args.strip)
    except CLI_ERRORS as exc:
        return error_exit(exc)
    print(markdown_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

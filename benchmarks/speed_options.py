"""``python -m benchmarks.speed_options``: the fidelity of every speed option, paired against the exact path.

Each option — step caching at an interval, OpenVINO bf16, OpenVINO int8, or a combination — generates the same
prompts with the same seeds (chunk k of ``--batch`` prompts: seed ``--seed + k``) as the exact path (ONNX Runtime,
fp32 artifacts, every step full). For each option and prompt set it reports the image PSNR against the exact path's
images and the alignment reader's metrics (:mod:`contextdiff_ref.data.alignment`) with the paired difference option −
exact and its 95% interval. Writes JSON (``--json``) and prints a markdown table; speed is measured apart
(``benchmarks.sd15_cpu``), never here. One engine directory serves every option: built with step caching's graphs,
and with int8 IR when an option asks for int8 (calibrated on the model's own prompts: export/openvino_int8.py).

Option names: ``exact``, or ``+``-joined parts: ``cache-K`` (cache interval K), ``f32`` / ``bf16`` / ``int8`` (OpenVINO
at that precision; without one, ONNX Runtime over the fp32 artifacts), e.g. ``cache-3``, ``int8``, ``bf16+cache-3``.

    python -m benchmarks.speed_options --options cache-2 cache-3 cache-5 bf16 int8 int8+cache-3 --json speed-options.json

``--video``: the same for video edits (:func:`run_video`) with a video model (default: the embedded, already tuned
``contextdiff_ref/models/shapes-video``): ``--clips`` moving-shapes clips of the video evaluation
(:func:`benchmarks.video_evaluation.source_clips`, its settings: 2 edits a clip, strength 0.93, guidance 15, the source
caption as negative prompt) are inverted once (every step full) and edited by the exact path and by each option
(``runtime.VideoEditor``); the report gives the evaluation's edit accuracy and structure kept
(:func:`contextdiff_ref.video.metrics.score_clip`) with the paired difference option − exact over (clip, edit) pairs
and its 95% interval, the frames' PSNR against the exact path's, and the seconds per sampling pass and per edit.

    python -m benchmarks.speed_options --video --options cache-2 cache-3 cache-5 --clips 12 --json benchmarks/results/video-step-cache.json
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.alignment import GenerateFn, check_sampling_args, evaluate
from benchmarks.harness import not_run_rows, render_table
from runtime.cli import CLI_ERRORS, Parser, error_exit, setup_logging
from runtime.errors import InvalidArgumentError
from runtime.files import atomic_write_json
from runtime.options import OpenVINOPrecision
from runtime.step_cache import DEFAULT_BRANCH

logger = logging.getLogger(__name__)

EXACT = "exact"
PSNR_CAP_DB = 100.0  # identical images (zero error) are reported as this
DEFAULT_OPTIONS = ("cache-2", "cache-3", "cache-5", "bf16", "int8", "bf16+cache-3", "int8+cache-3")


@dataclass(frozen=True)
class SpeedOption:
    """One way to run the engine directory: backend, OpenVINO precision (None: ONNX Runtime) and cache interval."""

    name: str
    backend: str = "onnxruntime-cpu"
    precision: OpenVINOPrecision | None = None
    cache_interval: int = 1


def parse_option(name: str) -> SpeedOption:
    """``exact`` or ``+``-joined parts ``cache-K`` (K >= 2) and one of f32/bf16/int8; anything else is refused, naming the grammar."""
    allowed = "'exact', or '+'-joined parts: 'cache-K' (an integer K >= 2) and at most one of 'f32', 'bf16', 'int8' (e.g. 'int8+cache-3')"
    if name == EXACT:
        return SpeedOption(EXACT)
    precision, interval = None, 1
    for part in name.split("+"):
        if part in {p.value for p in OpenVINOPrecision} and precision is None:
            precision = OpenVINOPrecision(part)
        elif part.startswith("cache-") and part[6:].isdigit() and int(part[6:]) >= 2 and interval == 1:
            interval = int(part[6:])
        else:
            raise InvalidArgumentError("--options", name, allowed)
    return SpeedOption(name, "openvino" if precision else "onnxruntime-cpu", precision, interval)


def psnr_db(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR (dB) of images in [0, 1], ``(N, H, W, 3)`` each; identical images get :data:`PSNR_CAP_DB`."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return np.minimum(10 * np.log10(1.0 / mse), PSNR_CAP_DB)


def psnr_summary(option: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    """PSNR of an option's images against the exact path's: of the set's mean squared error, and per image (median, min)."""
    per_image = psnr_db(option, exact)
    mse = float(np.mean((np.asarray(option, np.float64) - np.asarray(exact, np.float64)) ** 2))
    overall = PSNR_CAP_DB if mse == 0 else min(10 * float(np.log10(1.0 / mse)), PSNR_CAP_DB)
    return {"psnr_db": overall, "psnr_db_median": float(np.median(per_image)), "psnr_db_min": float(per_image.min())}


def generate_fns(engines: Path, options: Sequence[SpeedOption], steps: int, guidance: float | None) -> dict[str, GenerateFn]:
    """One GenerateFn per option (the exact path first), one Generator per backend and precision."""
    from runtime.generator import Generator

    generators: dict[tuple[str, Any], Generator] = {}
    fns: dict[str, GenerateFn] = {}
    for option in (SpeedOption(EXACT), *options):
        key = (option.backend, option.precision)
        if key not in generators:
            generators[key] = Generator.from_dir(engines, backend=option.backend, precision=option.precision)
        gen = generators[key]
        fns[option.name] = (lambda g, k: lambda prompts, seed: g(prompts, num_inference_steps=steps, guidance_scale=guidance, seed=seed,
                                                                 progress=False, cache_interval=k).images)(gen, option.cache_interval)  # fmt: skip
    return fns


def fidelity_report(report: dict[str, Any], images: dict[str, dict[str, np.ndarray]], options: Sequence[SpeedOption]) -> dict[str, Any]:
    """Per option and prompt set: PSNR vs exact, and the alignment metrics' paired differences option − exact (95% CI)."""
    out: dict[str, Any] = {}
    for option in options:
        out[option.name] = {"backend": option.backend, "precision": option.precision.value if option.precision else None,
                            "cache_interval": option.cache_interval, "sets": {}}  # fmt: skip
        for name, exact in images[EXACT].items():
            out[option.name]["sets"][name] = {"images": len(exact), **psnr_summary(images[option.name][name], exact),
                                              "alignment": report["models"][option.name][name],
                                              "alignment_difference": report["differences"][f"{option.name} − {EXACT}"][name]}  # fmt: skip
    return out


def markdown(result: dict[str, Any]) -> str:
    rows = []
    for option, entry in result["options"].items():
        for name, s in entry["sets"].items():
            diffs = [f"{d['difference']:+.1%} [{d['ci_low']:+.1%}, {d['ci_high']:+.1%}]" for d in s["alignment_difference"].values()]
            rows.append([option, name, s["images"], f"{s['psnr_db']:.1f}", f"{s['psnr_db_min']:.1f}", *diffs])
    header = ["option", "prompt set", "images", "PSNR vs exact dB", "min PSNR dB", "Δ colour-position acc. (95% CI)", "Δ full acc. (95% CI)",
              "Δ exact-prompt rate (95% CI)"]  # fmt: skip
    return render_table(header, rows + not_run_rows(result.get("skipped", {})))


def run(model: Path, engines: Path, options: Sequence[SpeedOption], *, steps: int, guidance: float | None, batch: int, seed: int = 0,
        limit: int | None = None, images_per_prompt: int = 1, cache_branch: int = DEFAULT_BRANCH) -> dict[str, Any]:  # fmt: skip
    """Build (or reuse) ``engines`` for ``model`` with what ``options`` need, generate and compare: the JSON report.
    Options this machine cannot run (OpenVINO missing, bf16 on a CPU without it) are left out, with the reason."""
    from export.build import BuildOptions, build_engine_dir
    from runtime.backends.openvino import openvino_unavailable_reason
    from runtime.options import BuildBackend

    skipped = {o.name: why for o in options if o.precision is not None and (why := openvino_unavailable_reason(o.precision))}
    options = [o for o in options if o.name not in skipped]

    int8 = any(o.precision is OpenVINOPrecision.INT8 for o in options)
    build = BuildOptions(backend=BuildBackend.ONNXRUNTIME, max_images=batch, step_cache=True, step_cache_branch=cache_branch,
                         openvino_precision=OpenVINOPrecision.INT8 if int8 else OpenVINOPrecision.F32)  # fmt: skip
    build_engine_dir(model, engines, build)
    fns = generate_fns(engines, options, steps, guidance)
    report, images = evaluate(fns, images_per_prompt, seed, batch, limit, pairs=[(o.name, EXACT) for o in options])
    return {"options": fidelity_report(report, images, options), "exact": report["models"][EXACT], "seconds": report["seconds"], "skipped": skipped}


def run_video(model: Path, engines: Path, options: Sequence[SpeedOption], *, clips: int, steps: int, guidance: float | None,
              cache_branch: int = DEFAULT_BRANCH) -> dict[str, Any]:  # fmt: skip
    """Video edits through each option against the exact path on the video evaluation's clips (module docstring): the
    JSON report. Each clip is inverted once per backend and precision (the inversion runs every step in full, so the
    cache options share the exact path's x_T); per clip the options edit in turn (drift hits all alike)."""
    from benchmarks.video_evaluation import EditSettings, source_clips
    from contextdiff_ref.video.data import clip_caption, clip_edits, render_clip
    from contextdiff_ref.video.metrics import paired_clip_difference, score_clip, summarize_clips
    from export.build import BuildOptions, build_engine_dir
    from runtime.backends.openvino import openvino_unavailable_reason
    from runtime.options import BuildBackend
    from runtime.video_editor import VideoEditor

    skipped = {o.name: why for o in options if o.precision is not None and (why := openvino_unavailable_reason(o.precision))}
    settings = EditSettings(clips=clips, num_inference_steps=steps, **({} if guidance is None else {"guidance_scale": guidance}))
    build_engine_dir(model, engines, BuildOptions(backend=BuildBackend.ONNXRUNTIME, step_cache=True, step_cache_branch=cache_branch))
    options = [SpeedOption(EXACT), *(o for o in options if o.name not in skipped)]
    editors: dict[tuple[str, Any], VideoEditor] = {}
    for o in options:
        if (o.backend, o.precision) not in editors:
            editors[o.backend, o.precision] = VideoEditor.from_dir(engines, backend=o.backend, precision=o.precision)
    frames: dict[str, list[np.ndarray]] = {o.name: [] for o in options}
    seconds: dict[str, list[float]] = {o.name: [] for o in options}
    inversion_seconds: list[float] = []
    call = dict(num_inference_steps=steps, guidance_scale=settings.guidance_scale, strength=settings.strength, seed=0, progress=False)
    clips_run, targets = source_clips(settings), []
    warm = render_clip(clips_run[0]), clip_caption(clips_run[0])
    for o in options:  # not timed: first runs (allocations, OpenVINO's compilation) and each plan's first shallow call
        editor = editors[o.backend, o.precision]
        editor.sample(editor.invert(*warm, 2, progress=False), warm[1], 2, guidance_scale=settings.guidance_scale, seed=0,
                      cache_interval=min(o.cache_interval, 2), progress=False)  # fmt: skip
    for i, clip in enumerate(clips_run):
        source, caption = render_clip(clip), clip_caption(clip)
        x_T = {}
        for key, editor in editors.items():
            start = time.perf_counter()
            x_T[key] = editor.invert(source, caption, steps, strength=settings.strength, progress=False)
            inversion_seconds.append(time.perf_counter() - start)
        for target in clip_edits(clip, settings.edits):
            targets.append(target)
            for o in options:
                start = time.perf_counter()
                frames[o.name].append(editors[o.backend, o.precision].sample(x_T[o.backend, o.precision], clip_caption(target), negative_prompt=caption,
                                                                             cache_interval=o.cache_interval, **call))  # fmt: skip
                seconds[o.name].append(time.perf_counter() - start)
        logger.info("clip %d/%d edited (%.0f s so far)", i + 1, clips, sum(inversion_seconds) + sum(map(sum, seconds.values())))
    scores = {name: [score_clip(f, t) for f, t in zip(stack, targets)] for name, stack in frames.items()}
    invert_s = float(np.mean(inversion_seconds))
    out: dict[str, Any] = {}
    for o in options:
        entry = {"backend": o.backend, "precision": o.precision.value if o.precision else None, "cache_interval": o.cache_interval,
                 "edits": summarize_clips(scores[o.name]), "sample_seconds": float(np.mean(seconds[o.name])),
                 "edit_seconds": invert_s + float(np.mean(seconds[o.name]))}  # fmt: skip
        if o.name != EXACT:
            entry |= psnr_summary(np.concatenate(frames[o.name]), np.concatenate(frames[EXACT]))
            entry["difference"] = paired_clip_difference(scores[o.name], scores[EXACT])
        out[o.name] = entry
    return {"video_options": out, "pairs": len(targets), "inversion_seconds": invert_s, "video_settings": dataclasses.asdict(settings), "skipped": skipped}


def video_markdown(result: dict[str, Any]) -> str:
    rows = []
    for option, e in result["video_options"].items():
        d = e.get("difference")
        cell = lambda k: "–" if d is None else f"{d[k]['difference']:+.1%} [{d[k]['ci_low']:+.1%}, {d[k]['ci_high']:+.1%}]"  # noqa: E731
        rows.append([option, f"{e['edits']['edit_accuracy']:.1%}", cell("edit_accuracy"), f"{e['edits']['structure_kept']:.1%}", cell("structure_kept"),
                     "∞" if d is None else f"{e['psnr_db']:.1f}", f"{e['sample_seconds']:.2f}", f"{e['edit_seconds']:.2f}"])  # fmt: skip
    header = ["option", "edit accuracy", "Δ vs exact (95% CI)", "structure kept", "Δ vs exact (95% CI)", "frames' PSNR vs exact dB", "s per sampling pass",
              "s per edit"]  # fmt: skip
    return render_table(header, rows + not_run_rows(result.get("skipped", {})))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(prog="python -m benchmarks.speed_options", description=__doc__.split("\n\n")[0].strip("`"))
    p.add_argument("--model", type=Path, default=None, help="model directory (default: the embedded default model)")
    p.add_argument("--options", nargs="+", default=list(DEFAULT_OPTIONS), help="speed options to compare with the exact path (default: %(default)s)")
    p.add_argument("--engines", type=Path, default=None, help="engine directory, built or reused (default: a temporary directory)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default: %(default)s)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's recommendation)")
    p.add_argument("--images-per-prompt", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=8, help="prompts per generation call (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts of each set (quick checks)")
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    p.add_argument("--cache-branch", type=int, default=DEFAULT_BRANCH,
                   help="the skip branch step caching splits the UNet at (build_engines.py --step-cache-branch; default: %(default)s)")
    p.add_argument("--video", action="store_true", help="video edits with a video model instead (default model: the embedded shapes-video)")
    p.add_argument("--clips", type=int, default=12, help="with --video: source clips, 2 edits each (default: %(default)s)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    for noisy in ("torch", "onnxscript", "onnx_ir", "diffusers", "transformers", "nncf"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from contextdiff_ref.models.defaults import default_model_dir, default_video_model_dir
    from contextdiff_ref.models.model_dir import check_model_dir, quiet_loading
    from benchmarks.harness import machine

    quiet_loading()
    try:
        check_sampling_args(args)
        if args.clips < 1:
            raise InvalidArgumentError("--clips", args.clips, "a positive integer")
        options = [parse_option(name) for name in dict.fromkeys(args.options) if name != EXACT]
        model = args.model if args.model is not None else (default_video_model_dir() if args.video else default_model_dir())
        check_model_dir(model)
        with tempfile.TemporaryDirectory(prefix="contextdiff-speed-options-") as tmp:
            engines = args.engines if args.engines is not None else Path(tmp) / "engines"
            if args.video:
                result = run_video(Path(model), engines, options, clips=args.clips, steps=args.steps, guidance=args.guidance, cache_branch=args.cache_branch)
            else:
                result = run(Path(model), engines, options, steps=args.steps, guidance=args.guidance, batch=args.batch, seed=args.seed,
                             limit=args.limit, images_per_prompt=args.images_per_prompt, cache_branch=args.cache_branch)  # fmt: skip
        result["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()} | {"model_dir": str(model)}
        result["machine"] = machine()
        if args.json is not None:
            atomic_write_json(args.json, result)
    except CLI_ERRORS as exc:
        return error_exit(exc)
    print(video_markdown(result) if args.video else markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m benchmarks.alignment --model DIR [--baseline DIR]``: text–image alignment on the shapes prompts.

For each model: build (or reuse) its ONNX Runtime engine directory, generate through ``runtime.Generator`` (or the
reference pipeline with ``--backend reference``) for both evaluation prompt sets, read every image with
:mod:`contextdiff_ref.data.alignment`, and report the three metrics with image counts. With ``--baseline``, the same
prompts and seeds go through the baseline too, and the paired difference of each metric gets a 95% confidence
interval. Writes JSON (``--json``) and prints a markdown table.

Seeds: the prompts of a set are generated in chunks of ``--batch``; chunk k uses seed ``--seed + k`` — identical for
every model, so the comparison is paired.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from benchmarks.harness import render_table
from contextdiff_ref.data.alignment import ImageScore, paired_difference, score_image, summarize
from contextdiff_ref.data.shapes import Scene, caption, evaluation_sets
from runtime.cli import CLI_ERRORS, Parser, error_exit, setup_logging
from runtime.errors import InvalidArgumentError
from runtime.files import atomic_write_json
from runtime.options import OpenVINOPrecision, choices

logger = logging.getLogger(__name__)

GenerateFn = Callable[[list[str], int], np.ndarray]  # (prompts, seed) -> (N, 32, 32, 3) float32 in [0, 1]


def runtime_generate_fn(model_dir: Path, engines_dir: Path, max_images: int, steps: int, guidance: float | None, backend: str = "onnxruntime-cpu",
                        precision: str | None = None, contextual_guidance: str | None = None) -> GenerateFn:  # fmt: skip
    """Generation through ``runtime.Generator`` on a CPU backend (ONNX Runtime, or OpenVINO at ``precision``), building
    the engine directory if needed. ``contextual_guidance``: the variant of method doc §5 (None: the model's)."""
    from export.build import BuildOptions, build_engine_dir
    from runtime.generator import Generator
    from runtime.options import BuildBackend

    build_engine_dir(model_dir, engines_dir, BuildOptions(backend=BuildBackend.ONNXRUNTIME, max_images=max_images))
    generator = Generator.from_dir(engines_dir, backend=backend, precision=precision)
    return lambda prompts, seed: generator(prompts, num_inference_steps=steps, guidance_scale=guidance, seed=seed, progress=False,
                                           contextual_guidance=contextual_guidance).images  # fmt: skip


def reference_generate_fn(model_dir: Path, steps: int, guidance: float | None, device: str = "cpu", contextual_guidance: str | None = None) -> GenerateFn:
    """Generation through the PyTorch reference pipeline."""
    from contextdiff_ref.pipelines.text_to_image import ContextDiffPipeline

    pipe = ContextDiffPipeline.from_pretrained(model_dir, device=device)
    return lambda prompts, seed: pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, seed=seed, progress=False,
                                      contextual_guidance=contextual_guidance).images  # fmt: skip


def generate_images(generate: GenerateFn, scenes: Sequence[Scene], seed: int, batch: int) -> np.ndarray:
    """(len(scenes), 32, 32, 3): one image per scene, chunk k of ``batch`` prompts with seed ``seed + k``."""
    out = []
    for k, start in enumerate(range(0, len(scenes), batch)):
        out.append(np.asarray(generate([caption(s) for s in scenes[start : start + batch]], seed + k)))
    return np.concatenate(out)


def score_images(images: np.ndarray, scenes: Sequence[Scene]) -> list[ImageScore]:
    return [score_image(image, scene) for image, scene in zip(images, scenes)]


def evaluation_scenes(images_per_prompt: int, limit: int | None, sets: dict[str, list[Scene]] | None = None) -> dict[str, list[Scene]]:
    """The prompt sets (default: both evaluation sets; optionally the first ``limit`` prompts of each), each prompt
    repeated per image."""
    sets = evaluation_sets() if sets is None else sets
    return {name: [s for s in scenes[:limit] for _ in range(images_per_prompt)] for name, scenes in sets.items()}


def grid_indices(count: int, per_set: int = 12) -> list[int]:
    """Which images of a set go into the grid: ``per_set`` evenly spaced ones (all when there are fewer)."""
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, min(per_set, count))})


def write_grid(images: dict[str, dict[str, np.ndarray]], path: Path, per_set: int = 12, scale: int = 4) -> None:
    """PNG: one row per model and prompt set (models top to bottom), ``per_set`` evenly spaced images each, upscaled."""
    from PIL import Image

    from runtime.images import make_grid

    rows = [images[m][name][grid_indices(len(images[m][name]), per_set)] for m in images for name in images[m]]
    width = max(len(r) for r in rows)
    padded = [np.concatenate([r, np.zeros((width - len(r), *r.shape[1:]), r.dtype)]) for r in rows]
    grid = make_grid(np.concatenate(padded), columns=width)
    pixels = np.round(np.clip(grid, 0, 1) * 255).astype(np.uint8).repeat(scale, axis=0).repeat(scale, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def markdown_table(report: dict) -> str:
    rows = [[model, name, m["images"], f"{m['colour_position_accuracy']:.1%}", f"{m['full_accuracy']:.1%}", f"{m['exact_prompt_rate']:.1%}"]
            for model, sets in report["models"].items() for name, m in sets.items()]
    differences = report.get("differences", {"ContextDiff − baseline": report["difference"]} if "difference" in report else {})
    for label, per_set in differences.items():
        for name, diffs in per_set.items():
            cells = [f"{d['difference']:+.1%} [{d['ci_low']:+.1%}, {d['ci_high']:+.1%}]" for d in diffs.values()]
            images = next(iter(report["models"].values()))[name]["images"]
            rows.append([f"{label} (95% CI)", name, images, *cells])
    return render_table(["model", "prompt set", "images", "colour-position acc.", "full acc.", "exact-prompt rate"], rows)


def evaluate(models: dict[str, GenerateFn], images_per_prompt: int = 1, seed: int = 0, batch: int = 8, limit: int | None = None,
             sets: dict[str, list[Scene]] | None = None, pairs: Sequence[tuple[str, str]] = ()) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:  # fmt: skip
    """Report (JSON-ready) and the generated images per model and prompt set (``sets``: default both evaluation sets).
    "difference": contextdiff − baseline when both are among ``models``; "differences": the paired difference of each
    of ``pairs`` (a, b), labelled "a − b". With several images per prompt each difference also gets the interval
    over the prompts' means (``prompt_ci_low/high``: :func:`contextdiff_ref.data.alignment.paired_interval`)."""
    sets = evaluation_scenes(images_per_prompt, limit, sets)
    group = lambda name: np.arange(len(sets[name])) // images_per_prompt if images_per_prompt > 1 else None  # noqa: E731
    report: dict = {"models": {}, "seconds": {}}
    images: dict[str, dict[str, np.ndarray]] = {}
    scores: dict[str, dict[str, list[ImageScore]]] = {}
    for model, generate in models.items():
        start = time.perf_counter()
        images[model] = {name: generate_images(generate, scenes, seed, batch) for name, scenes in sets.items()}
        report["seconds"][model] = time.perf_counter() - start
        scores[model] = {name: score_images(images[model][name], scenes) for name, scenes in sets.items()}
        report["models"][model] = {name: summarize(s) for name, s in scores[model].items()}
        logger.info("%s: %s", model, report["models"][model])
    if "contextdiff" in scores and "baseline" in scores:
        report["difference"] = {name: paired_difference(scores["contextdiff"][name], scores["baseline"][name], groups=group(name)) for name in sets}
    if pairs:
        report["differences"] = {f"{a} − {b}": {name: paired_difference(scores[a][name], scores[b][name], groups=group(name)) for name in sets}
                                 for a, b in pairs}  # fmt: skip
    return report, images


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(prog="python -m benchmarks.alignment", description="Text–image alignment of shapes models (ContextDiff vs the no-adapter baseline).")
    p.add_argument("--model", type=Path, default=None, help="ContextDiff model directory (default: the embedded default model)")
    p.add_argument("--baseline", type=Path, default=None, help="baseline model directory (same prompts and seeds)")
    p.add_argument("--backend", choices=["runtime", "reference"], default="runtime", help="runtime.Generator on ONNX Runtime, or the PyTorch reference (default: %(default)s)")
    p.add_argument("--runtime-backend", choices=["onnxruntime-cpu", "openvino"], default="onnxruntime-cpu",
                   help="the runtime's backend with --backend runtime (default: %(default)s)")
    p.add_argument("--precision", choices=choices(OpenVINOPrecision), default=None, help="OpenVINO's inference precision (--runtime-backend openvino)")
    p.add_argument("--engines", type=Path, default=None, help="where engine directories are built (default: a temporary directory)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default: %(default)s)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: each model's recommendation, else 7.5)")
    p.add_argument("--contextual-guidance", choices=["conditional", "guided"], default=None,
                   help="ContextDiff's variant of guidance and the shift (method doc §5; default: each model's)")
    p.add_argument("--images-per-prompt", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=8, help="prompts per generation call (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts of each set (quick checks)")
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    p.add_argument("--grid", type=Path, default=None, help="write a PNG: per model, a row of 12 evenly spaced images of each prompt set")
    return p.parse_args(argv)


def check_sampling_args(args: argparse.Namespace) -> None:
    """--steps, --images-per-prompt and --batch positive integers, --limit one where given (this command's and
    benchmarks.speed_options')."""
    for name in ("steps", "images_per_prompt", "batch"):
        if getattr(args, name) < 1:
            raise InvalidArgumentError(f"--{name.replace('_', '-')}", getattr(args, name), "a positive integer")
    if args.limit is not None and args.limit < 1:
        raise InvalidArgumentError("--limit", args.limit, "a positive integer")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    for noisy in ("torch", "onnxscript", "onnx_ir", "diffusers", "transformers", "export", "runtime"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from contextdiff_ref.models.defaults import default_model_dir
    from contextdiff_ref.models.model_dir import check_model_dir, quiet_loading

    quiet_loading()
    try:
        check_sampling_args(args)
        dirs = {"contextdiff": args.model if args.model is not None else default_model_dir()}
        if args.baseline is not None:
            dirs["baseline"] = args.baseline
        for path in dirs.values():
            check_model_dir(path)
        with tempfile.TemporaryDirectory(prefix="contextdiff-eval-") as tmp:
            engines_root = args.engines if args.engines is not None else Path(tmp)
            models = {
                name: runtime_generate_fn(Path(path), engines_root / name, args.batch, args.steps, args.guidance, args.runtime_backend, args.precision,
                                          args.contextual_guidance)
                if args.backend == "runtime"
                else reference_generate_fn(Path(path), args.steps, args.guidance, contextual_guidance=args.contextual_guidance)
                for name, path in dirs.items()
            }  # fmt: skip
            report, images = evaluate(models, args.images_per_prompt, args.seed, args.batch, args.limit)
        if args.grid is not None:
            write_grid(images, args.grid)
        report["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()} | {"model_dirs": {k: str(v) for k, v in dirs.items()}}
        if args.json is not None:
            atomic_write_json(args.json, report)
    except CLI_ERRORS as exc:
        return error_exit(exc)
    print(markdown_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m benchmarks.image_edits --out benchmarks/results/image-edits-shapes.json``: image edits on shapes scenes,
each mode, ContextDiff vs the r ≡ 0 baseline, through the exported engines (ONNX Runtime, ``runtime.Generator.edit``).

Sources: ``--images`` two-object scenes (:func:`contextdiff_ref.data.shapes.two_object_scenes`); edit i changes the
first object's colour (even i) or shape (odd i) to the next one in the palette. Each edit is read with the alignment
reader (:mod:`contextdiff_ref.data.alignment`): *edited* — the edited object's quadrant reads as the target object;
*kept* — every other quadrant reads as in the source (the same colour and shape, or empty). Modes: ``img2img``,
``invert`` (source caption for the inversion), and both with a mask (``inpaint-img2img``, ``inpaint-invert``: the
edited object's quadrant, from the source, never the target; ``--region-noise`` inside it). Guidance's unconditional
prompt is the source caption (as the video evaluation's ``--negative source``), or with ``--negative empty`` the empty
prompt.

Methods: ``contextdiff`` — the model's engines; ``baseline`` — the same model with the adapter's output projection
zeroed (r ≡ 0: plain DDIM, the same UNet), its engines built here. Per mode: edit accuracy and rest kept per method,
and the paired ContextDiff − baseline difference of each with its 95% interval (same sources, edits and seeds).

Pixel or latent models alike (a latent model's engine directories need the VAE encoder, which builds export).
``--strip PNG`` also draws the first ``--strip-scenes`` sources: source | edited caption | each mode's ContextDiff edit.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import machine, render_table, write_result
from contextdiff_ref.data.alignment import paired_interval, read_quadrant
from contextdiff_ref.data.shapes import COLOURS, POSITIONS, SHAPES, Scene, caption, quadrant_of, render, two_object_scenes
from runtime.cli import CLI_ERRORS, TIMED, Parser, error_exit, setup_logging

logger = logging.getLogger(__name__)

MODES = {  # name -> (Generator.edit mode, masked)
    "img2img": ("img2img", False),
    "invert": ("invert", False),
    "inpaint-img2img": ("img2img", True),
    "inpaint-invert": ("invert", True),
}
METHODS = ("contextdiff", "baseline")


def edited_scene(scene: Scene, index: int) -> Scene:
    """The first object's colour (even ``index``) or shape (odd) changed to the next in the palette."""
    obj = scene[0]
    if index % 2 == 0:
        colours = list(COLOURS)
        new = dataclasses.replace(obj, colour=colours[(colours.index(obj.colour) + 1) % len(colours)])
    else:
        new = dataclasses.replace(obj, shape=SHAPES[(SHAPES.index(obj.shape) + 1) % len(SHAPES)])
    return (new, *scene[1:])


def score_edit(image: np.ndarray, source: Scene, target: Scene) -> tuple[bool, bool]:
    """(edited, kept): the edited object's quadrant reads as the target object; every other quadrant as in the source."""
    obj = target[0]
    reading = read_quadrant(image, obj.position)
    edited = reading.occupied and reading.colour == obj.colour and reading.shape == obj.shape
    named = {o.position: o for o in source}
    kept = True
    for position in POSITIONS:
        if position == obj.position:
            continue
        r = read_quadrant(image, position)
        want = named.get(position)
        kept &= (not r.occupied) if want is None else (r.occupied and r.colour == want.colour and r.shape == want.shape)
    return bool(edited), bool(kept)


def region(scene: Scene) -> np.ndarray:
    """The edited (first) object's quadrant, (32, 32) float32."""
    mask = np.zeros((32, 32), np.float32)
    rows, cols = quadrant_of(scene[0].position)
    mask[rows, cols] = 1.0
    return mask


def baseline_engines(model_dir: Path, out: Path) -> Path:
    """Engines of ``model_dir`` with the adapter's output projection zeroed (r ≡ 0), built into ``out`` (reused)."""
    import torch

    from contextdiff_ref.models.model_dir import load_model_dir, save_model_dir
    from export.build import BuildOptions, build_engine_dir
    from runtime.options import BuildBackend

    if (out / "engines" / "manifest.json").exists():
        return out / "engines"
    components = load_model_dir(model_dir)
    torch.nn.init.zeros_(components.adapter.proj_out.weight)
    torch.nn.init.zeros_(components.adapter.proj_out.bias)
    save_model_dir(components, out / "model")
    build_engine_dir(out / "model", out / "engines", BuildOptions(backend=BuildBackend.ONNXRUNTIME, max_images=1))
    return out / "engines"


def strip_image(rows: list[tuple[np.ndarray, str, list[np.ndarray]]], modes: list[str], scale: int = 4) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]: a header row naming the columns, then per source its image, the edited caption and
    each mode's edit (in ``modes`` order), images enlarged ``scale`` times (nearest), on a white sheet."""
    from PIL import Image, ImageDraw, ImageFont

    cell, gap, text_w, header = 32 * scale, 4, 40 * scale, 18
    font = ImageFont.load_default(size=12)
    width = gap + (cell + gap) * (1 + len(modes)) + text_w + gap
    sheet = Image.new("RGB", (width, header + gap + (cell + gap) * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    xs = [gap, gap + cell + gap] + [2 * gap + cell + text_w + gap + k * (cell + gap) for k in range(len(modes))]
    for x, label in zip(xs, ["source", "edited caption", *modes]):
        draw.text((x, 2), label, fill="black", font=font)
    for r, (source, text, edits) in enumerate(rows):
        y = header + gap + r * (cell + gap)
        for x, image in zip([xs[0], *xs[2:]], [source, *edits]):
            pixels = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
            sheet.paste(Image.fromarray(pixels).resize((cell, cell), Image.Resampling.NEAREST), (x, y))
        draw.multiline_text((xs[1], y + 4), textwrap.fill(text, 22), fill="black", font=font, spacing=3)
    return np.asarray(sheet, dtype=np.float32) / 255.0


def parse_args(argv: list[str] | None) -> Any:
    p = Parser(prog="python -m benchmarks.image_edits", description="Image edits on shapes scenes: each mode, ContextDiff vs the r ≡ 0 baseline.")
    p.add_argument("--engines", type=Path, required=True, help="the model's engine directory (ONNX Runtime)")
    p.add_argument("--model", type=Path, required=True, help="its model directory (for the baseline's engines)")
    p.add_argument("--work", type=Path, default=None,
                   help="where the baseline's model and engines go, reused by later runs "
                        "(default: runs/image-edits-baseline/<the model directory's name>)")
    p.add_argument("--out", type=Path, required=True, help="JSON result (written atomically)")
    p.add_argument("--images", type=int, default=48, help="source scenes (edits per mode and method; default: %(default)s)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default: %(default)s)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--strength", type=float, default=None, help="strength (default: 0.8 for img2img, 1 for invert)")
    p.add_argument("--region-noise", type=float, default=1.0, help="with the mask (default: %(default)s)")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    p.add_argument("--negative", choices=("source", "empty"), default="source",
                   help="guidance's unconditional prompt: the source caption, or the empty prompt (default: %(default)s)")
    p.add_argument("--strip", type=Path, default=None, help="also write a PNG: source | edited caption | each mode's ContextDiff edit")
    p.add_argument("--strip-scenes", type=int, default=4, help="sources in the strip, the first ones (default: %(default)s)")
    args = p.parse_args(argv)
    if args.images < 1 or args.steps < 1 or args.strip_scenes < 1:
        p.error(f"--images={args.images}, --steps={args.steps}, --strip-scenes={args.strip_scenes}: each must be at least 1")
    if args.strip is not None and args.strip.suffix.lower() != ".png":
        p.error(f"--strip={args.strip}: a file name ending in .png")
    args.work = args.work or Path("runs/image-edits-baseline") / args.model.resolve().name  # one per model: a reused baseline is this model's
    return args


Strip = list[tuple[np.ndarray, str, list[np.ndarray]]]  # per source: its image, the edited caption, ContextDiff's edit per mode


def edit_scenes(args: Any, gens: dict[str, Any]) -> tuple[dict[str, dict[str, list[tuple[bool, bool]]]], Strip]:
    """Every source edited in every mode by every method: (edited, kept) per mode and method, and the strip's rows."""
    scores: dict[str, dict[str, list[tuple[bool, bool]]]] = {m: {k: [] for k in METHODS} for m in args.modes}
    strip: Strip = []
    start = time.perf_counter()
    scenes = two_object_scenes(args.images, seed=0)
    for i, scene in enumerate(scenes):
        target, image = edited_scene(scene, i), render(scene)
        row: list[np.ndarray] = []
        for name in args.modes:
            mode, masked = MODES[name]
            kwargs = dict(mode=mode, source_prompt=caption(scene) if mode == "invert" else None, mask=region(scene) if masked else None,
                          region_noise=args.region_noise if masked else 0.0, strength=args.strength, num_inference_steps=args.steps,
                          guidance_scale=args.guidance, seed=i, negative_prompt=caption(scene) if args.negative == "source" else None,
                          progress=False)  # fmt: skip
            for method, gen in gens.items():
                out = gen.edit(image, caption(target), **kwargs).images[0]
                scores[name][method].append(score_edit(out, scene, target))
                if method == "contextdiff":
                    row.append(out)
        if args.strip is not None and i < args.strip_scenes:
            strip.append((image, caption(target), row))
        logger.info("%d/%d sources (%.0f s)", i + 1, len(scenes), time.perf_counter() - start)
    return scores, strip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(TIMED)
    from runtime.generator import Generator

    try:
        gens = {"contextdiff": Generator.from_dir(args.engines, backend="onnxruntime-cpu"),
                "baseline": Generator.from_dir(baseline_engines(args.model, args.work), backend="onnxruntime-cpu")}  # fmt: skip
        start = time.perf_counter()
        scores, strip = edit_scenes(args, gens)  # a latent model's engines without a VAE encoder: refused, saying how to build them
    except CLI_ERRORS as exc:
        return error_exit(exc)
    report: dict[str, Any] = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "machine": machine(), "modes": {}}
    rows = []
    for name in args.modes:
        per = {m: np.array(scores[name][m], dtype=np.float64) for m in METHODS}  # (n, 2): edited, kept
        entry: dict[str, Any] = {m: {"edit_accuracy": float(v[:, 0].mean()), "rest_kept": float(v[:, 1].mean()),
                                     "edited_and_kept": float((v[:, 0] * v[:, 1]).mean())} for m, v in per.items()}  # fmt: skip
        entry["difference"] = {measure: paired_interval(per["contextdiff"][:, j], per["baseline"][:, j]) for j, measure in enumerate(("edit_accuracy", "rest_kept"))}
        report["modes"][name] = entry
        d = entry["difference"]
        rows.append([name, len(per["contextdiff"]), f"{entry['contextdiff']['edit_accuracy']:.1%}", f"{entry['baseline']['edit_accuracy']:.1%}",
                     f"{d['edit_accuracy']['difference']:+.1%} [{d['edit_accuracy']['ci_low']:+.1%}, {d['edit_accuracy']['ci_high']:+.1%}]",
                     f"{entry['contextdiff']['rest_kept']:.1%}", f"{entry['baseline']['rest_kept']:.1%}",
                     f"{d['rest_kept']['difference']:+.1%} [{d['rest_kept']['ci_low']:+.1%}, {d['rest_kept']['ci_high']:+.1%}]"])  # fmt: skip
    report["seconds"] = round(time.perf_counter() - start, 1)
    if args.strip is not None:
        from runtime.image_io import write_image

        write_image(args.strip, strip_image(strip, args.modes))
        report["strip"] = str(args.strip)
    header = ["mode", "edits", "edit acc. ContextDiff", "edit acc. baseline", "difference [95%]", "rest kept ContextDiff", "rest kept baseline", "difference [95%]"]
    return write_result(report, args.out, render_table(header, rows))


if __name__ == "__main__":
    sys.exit(main())

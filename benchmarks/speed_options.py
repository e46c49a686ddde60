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
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
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
        limit: int | None = None, images_per_prompt: int = 1) -> dict[str, Any]:  # fmt: skip
    """Build (or reuse) ``engines`` for ``model`` with what ``options`` need, generate and compare: the JSON report.
    Options this machine cannot run (OpenVINO missing, bf16 on a CPU without it) are left out, with the reason."""
    from export.build import BuildOptions, build_engine_dir
    from runtime.backends.openvino import openvino_unavailable_reason
    from runtime.options import BuildBackend

    skipped = {o.name: why for o in options if o.precision is not None and (why := openvino_unavailable_reason(o.precision))}
    options = [o for o in options if o.name not in skipped]

    int8 = any(o.precision is OpenVINOPrecision.INT8 for o in options)
    build = BuildOptions(backend=BuildBackend.ONNXRUNTIME, max_images=batch, step_cache=True,
                         openvino_precision=OpenVINOPrecision.INT8 if int8 else OpenVINOPrecision.F32)  # fmt: skip
    build_engine_dir(model, engines, build)
    fns = generate_fns(engines, options, steps, guidance)
    report, images = evaluate(fns, images_per_prompt, seed, batch, limit, pairs=[(o.name, EXACT) for o in options])
    return {"options": fidelity_report(report, images, options), "exact": report["models"][EXACT], "seconds": report["seconds"], "skipped": skipped}


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
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    for noisy in ("torch", "onnxscript", "onnx_ir", "diffusers", "transformers", "nncf"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from contextdiff_ref.models.defaults import default_model_dir
    from contextdiff_ref.models.model_dir import check_model_dir, quiet_loading
    from benchmarks.harness import machine

    quiet_loading()
    try:
        check_sampling_args(args)
        options = [parse_option(name) for name in dict.fromkeys(args.options) if name != EXACT]
        model = args.model if args.model is not None else default_model_dir()
        check_model_dir(model)
        with tempfile.TemporaryDirectory(prefix="contextdiff-speed-options-") as tmp:
            engines = args.engines if args.engines is not None else Path(tmp) / "engines"
            result = run(Path(model), engines, options, steps=args.steps, guidance=args.guidance, batch=args.batch, seed=args.seed,
                         limit=args.limit, images_per_prompt=args.images_per_prompt)  # fmt: skip
        result["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()} | {"model_dir": str(model)}
        result["machine"] = machine()
        if args.json is not None:
            atomic_write_json(args.json, result)
    except CLI_ERRORS as exc:
        return error_exit(exc)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Parity of an engine directory with its model directory: runtime.Generator against the reference pipeline for the same
call and seed — per step the relative L2 error of x̂_0, then the final latent and the decoded image. Writes JSON.

    python -m benchmarks.parity --model models/sd15-contextdiff --engines engines/sd15-contextdiff-512 --steps 3
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from runtime.cli import PLAIN, Parser, setup_logging
from runtime.files import atomic_write_json
from runtime.metrics import psnr, relative_l2
from runtime.options import OpenVINOPrecision, choices

logger = logging.getLogger("benchmarks.parity")


@dataclass
class ParityReport:
    image_psnr: float  # decoded images, [0, 1]
    latent_psnr: float  # final sample, peak = the reference's value range
    latent_rel_error: float
    x0_rel_errors: list[float]  # per step
    seconds: dict[str, float]  # reference and runtime, one call each
    images: np.ndarray = field(repr=False)  # the runtime's

    @property
    def x0_max_rel_error(self) -> float:
        return max(self.x0_rel_errors)

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "images"}
        return {**data, "x0_max_rel_error": self.x0_max_rel_error}


def compare_with_reference(model_dir: str | Path, engine_dir: str | Path, prompts: Sequence[str], *, backend: str = "auto", precision: str | None = None,
                           reference_cache: dict | None = None, **call: Any) -> ParityReport:  # fmt: skip
    """Run the reference pipeline and runtime.Generator (``backend``/``precision`` as ``Generator.from_dir`` takes them)
    on the same call (``call``: the pipelines' keyword arguments; ``seed`` defaults to 0) and compare them step by step.
    ``reference_cache``: a dict that keeps the reference's outputs by (model directory, prompts, call), so that several
    engine directories of one model are compared with one reference run."""
    from contextdiff_ref.pipelines.text_to_image import ContextDiffPipeline
    from runtime.generator import Generator

    call = {"seed": 0, "progress": False, **call}
    outputs, seconds = {}, {}
    systems = (("reference", lambda: ContextDiffPipeline.from_pretrained(model_dir)),
               ("runtime", lambda: Generator.from_dir(engine_dir, backend=backend, precision=precision)))  # fmt: skip
    key = (str(Path(model_dir).resolve()), tuple(prompts), json.dumps(call, sort_keys=True, default=str))
    if reference_cache is not None and key in reference_cache:
        outputs["reference"], seconds["reference"] = reference_cache[key]
        systems = systems[1:]
    for name, make in systems:
        system, steps = make(), []
        start = time.perf_counter()
        images = system(list(prompts), callback=steps.append, **call).images
        seconds[name] = time.perf_counter() - start
        to_np = (lambda a: a.float().numpy()) if name == "reference" else np.asarray  # noqa: E731
        outputs[name] = (images, [to_np(s.pred_original_sample).copy() for s in steps], to_np(steps[-1].sample).copy())
        del system  # one model in memory at a time
        if name == "reference" and reference_cache is not None:
            reference_cache[key] = outputs[name], seconds[name]
    (ref_images, ref_x0, ref_latent), (images, x0, latent) = outputs["reference"], outputs["runtime"]
    assert images.shape == ref_images.shape and len(x0) == len(ref_x0)
    return ParityReport(
        image_psnr=psnr(images, ref_images), latent_psnr=psnr(latent, ref_latent, peak=float(ref_latent.max() - ref_latent.min())),
        latent_rel_error=relative_l2(latent, ref_latent), x0_rel_errors=[relative_l2(b, a) for a, b in zip(ref_x0, x0)], seconds=seconds,
        images=images,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m benchmarks.parity", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="model directory")
    p.add_argument("--engines", type=Path, required=True, help="engine directory built from it")
    p.add_argument("--prompt", default="a photograph of an astronaut riding a horse")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto", help="runtime backend, as `python -m runtime` takes it (default: %(default)s)")
    p.add_argument("--precision", choices=choices(OpenVINOPrecision), default=None, help="the openvino backend's precision")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: print only)")
    args = p.parse_args(argv)
    setup_logging(PLAIN)
    from contextdiff_ref.models.model_dir import quiet_loading
    from runtime.errors import ContextDiffError

    quiet_loading()
    try:
        report = compare_with_reference(args.model, args.engines, [args.prompt], num_inference_steps=args.steps, guidance_scale=args.guidance,
                                        eta=args.eta, seed=args.seed, backend=args.backend, precision=args.precision)  # fmt: skip
    except ContextDiffError as exc:
        p.exit(2, f"error: {exc}\n")
    manifest = json.loads((args.engines / "manifest.json").read_text())
    call = {k: v for k, v in vars(args).items() if k not in ("model", "engines", "out", "backend", "precision")}
    result = {"model": str(args.model), "engines": str(args.engines), "call": call, "backend": args.backend, "openvino_precision": args.precision,
              "precision": {k: v["precision"] for k, v in manifest["components"].items()},
              "flavour": {k: v["onnx"].get("flavour", "standard") for k, v in manifest["components"].items()}, **report.to_json()}  # fmt: skip
    if args.out:
        atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

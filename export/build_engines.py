"""``python export/build_engines.py``: build the engine directory of a ContextDiff model.

With no arguments: the embedded default model into ``./engines/<model name>``, TensorRT plans where TensorRT
works, ONNX Runtime artifacts otherwise. Ends with a table of what was built and what was reused.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime.cli import CLI_ERRORS, PLAIN, Parser, error_exit, setup_logging
from runtime.errors import ContextDiffError, InvalidArgumentError  # noqa: E402
from export.openvino_int8 import DEFAULT_STEPS, DEFAULT_SUBSET, read_prompts  # noqa: E402
from runtime.options import BuildBackend, OpenVINOPrecision, PlanRuntime, Precision, choices  # noqa: E402
from runtime.step_cache import DEFAULT_BRANCH  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(prog="python export/build_engines.py", description=__doc__.split("\n\n")[0].strip("`"))
    p.add_argument("--model", type=Path, default=None,
                   help="model directory, of an image model or a video model (default: the embedded default model; its video model: "
                        "contextdiff_ref/models/shapes-video)")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="engine directory (default: ./engines/<model name>)")
    p.add_argument("--precision", choices=choices(Precision), default=None, help="default: fp16 with TensorRT, fp32 with ONNX Runtime")
    p.add_argument("--backend", choices=choices(BuildBackend), default="auto", help="default: %(default)s")
    p.add_argument("--onnx-flavour", choices=["standard", "onnxruntime"], default=None,
                   help="ONNX graphs: 'standard' (ai.onnx ops only; TensorRT, any runtime) or 'onnxruntime' (attention fused into "
                        "ONNX Runtime's MultiHeadAttention); default: standard with TensorRT, onnxruntime otherwise")  # fmt: skip
    p.add_argument("--batch", type=int, default=1,
                   help="max images (videos, for a video model) per call; guidance doubling is accounted for (default: %(default)s)")
    p.add_argument("--height", type=int, default=None, help="image height in pixels (default: the model's)")
    p.add_argument("--width", type=int, default=None, help="image width in pixels (default: the model's)")
    p.add_argument("--dynamic-size", action="store_true", help="accept half to twice the size instead of exactly it")
    p.add_argument("--tensorrt-runtime", choices=choices(PlanRuntime), default="full",
                   help="TensorRT that runs the plans: 'full' (fastest, the full TensorRT on the deployment machine) or 'lean' "
                        "(version-compatible plans, run by the ~50 MB tensorrt_lean package of this TensorRT version); default: %(default)s")  # fmt: skip
    p.add_argument("--tensorrt-refit", action="store_true",
                   help="build refittable plans (TensorRT's REFIT flag), so the runtime can apply LoRAs by refitting (docs/guides/lora.md)")
    p.add_argument("--openvino-precision", choices=choices(OpenVINOPrecision), default="f32",
                   help="precision recorded for the runtime's openvino backend: 'bf16' makes the runtime's auto backend pick OpenVINO bf16 on "
                        "CPUs that have bf16 (the ONNX artifacts are the same); 'int8' also builds int8 OpenVINO IR with NNCF, calibrated on "
                        "--calibration-prompts, which the auto backend then runs (default: %(default)s)")  # fmt: skip
    p.add_argument("--calibration-prompts", type=Path, default=None, metavar="FILE",
                   help="with --openvino-precision int8: a text file of prompts, one per line, the UNets are calibrated on (default: the "
                        "model's own captions for the shapes models, else a built-in list: export/data/calibration_prompts.txt)")  # fmt: skip
    p.add_argument("--calibration-steps", type=int, default=DEFAULT_STEPS, help="with int8: denoising steps per calibration prompt (default: %(default)s)")
    p.add_argument("--calibration-subset", type=int, default=DEFAULT_SUBSET,
                   help="with int8: how many of the captured UNet calls NNCF calibrates on, evenly spaced (default: %(default)s)")
    p.add_argument("--workspace-gib", type=float, default=None, help="TensorRT builder memory limit in GiB")
    p.add_argument("--step-cache", action="store_true",
                   help="also export step caching's graphs (the UNet with its deep feature, the shallow UNet; a video model's inflated UNet "
                        "too): `python -m runtime [edit] ... --cache-interval K`")  # fmt: skip
    p.add_argument("--step-cache-branch", type=int, default=None,
                   help="with --step-cache: the skip branch the UNet is split at, counted from the outermost (0: conv_in's, the least work "
                        "per cached step; 1: the first down layer's, DeepCache's setting for SD-1.5; default: %(default)s)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="rebuild every artifact")
    p.add_argument("--onnx-cache", type=lambda s: Path(s) if s else None, default=os.environ.get("CONTEXTDIFF_ONNX_CACHE") or None, metavar="DIR",
                   help="a folder of ONNX artifacts shared by builds: another engine directory of the same model (batch, size, "
                        "backend) copies them instead of exporting again (default: $CONTEXTDIFF_ONNX_CACHE, else none; '' for none)")  # fmt: skip
    p.add_argument("--verbose", action="store_true", help="debug log, with the traceback of a failure")
    return p.parse_args(argv)


def format_table(results) -> str:
    rows = [("component", "format", "precision", "size", "build time", "status")]
    for r in results:
        size = f"{r.size_bytes / 2**20:.1f} MiB" if r.size_bytes >= 2**20 else f"{r.size_bytes / 2**10:.0f} KiB"
        rows.append((r.component, r.format, r.precision, size, f"{r.seconds:.1f} s", ("cached" if r.cached else "built") + (f" ({r.note})" if r.note else "")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths)] + lines[1:])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(PLAIN, level=logging.DEBUG if args.verbose else logging.INFO)
    for noisy in ("torch", "onnxscript", "onnx_ir", "httpx", "diffusers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from contextdiff_ref.models.defaults import default_model_dir
    from contextdiff_ref.models.model_dir import quiet_loading
    from export.build import BuildOptions, build_engine_dir
    from export.onnx_export import Flavour

    quiet_loading()

    try:
        model = args.model if args.model is not None else default_model_dir()
        prompts = read_prompts(args.calibration_prompts) if args.calibration_prompts is not None else None
        if args.step_cache_branch is not None and not args.step_cache:
            raise InvalidArgumentError("--step-cache-branch", args.step_cache_branch, "none unless --step-cache (the branch is where step caching splits the UNet)")
        out = args.out if args.out is not None else Path("engines") / Path(model).resolve().name
        options = BuildOptions(backend=BuildBackend(args.backend), precision=Precision(args.precision) if args.precision else None,
                               flavour=Flavour(args.onnx_flavour) if args.onnx_flavour else None,
                               max_images=args.batch, height=args.height, width=args.width, dynamic_size=args.dynamic_size,
                               force=args.force, workspace_gib=args.workspace_gib, tensorrt_runtime=PlanRuntime(args.tensorrt_runtime),
                               tensorrt_refit=args.tensorrt_refit,
                               openvino_precision=OpenVINOPrecision(args.openvino_precision), onnx_cache=args.onnx_cache,
                               step_cache=args.step_cache, step_cache_branch=DEFAULT_BRANCH if args.step_cache_branch is None else args.step_cache_branch, calibration_prompts=prompts, calibration_steps=args.calibration_steps,
                               calibration_subset=args.calibration_subset)  # fmt: skip
        results = build_engine_dir(model, out, options)
    except CLI_ERRORS as exc:
        return error_exit(exc)
    print(format_table(results))
    print(f"engine directory: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

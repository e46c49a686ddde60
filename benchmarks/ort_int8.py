"""``python -m benchmarks.ort_int8``: does ONNX Runtime int8 (static QDQ) gain over OpenVINO int8 on this CPU? (issue 34)

One UNet call of an engine directory built with ``--openvino-precision int8`` (default: the SD-1.5-class model's
256 × 256 directory that ``benchmarks.sd15_cpu`` builds), timed on the same captured input through:

- ONNX Runtime over the fp32 ONNX artifact (the exact path's UNet);
- ONNX Runtime over int8 graphs that ``onnxruntime.quantization.quantize_static`` makes from it (QDQ format, int8
  weights per channel, uint8 activations, MinMax calibration on UNet inputs captured from the runtime's own pipeline
  as the OpenVINO int8 build captures them: :func:`export.openvino_int8.capture_unet_inputs`), in two recipes —
  ``conv``: the convolutions only (the hybrid recipe's activation-quantized part), ``conv+matmul``: the linear
  layers' MatMuls too;
- OpenVINO over the directory's int8 IR (the hybrid recipe, export/openvino_int8.py).

Each row gets its median seconds per call (interleaved, after a warm-up) and the relative L2 error of its prediction
against the fp32 one on a captured input that was not in the calibration set. Writes JSON; prints a table.

    python -m benchmarks.ort_int8 --engines engines/sd15-contextdiff-256 --out benchmarks/results/ort-int8.json
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks.harness import interleave, machine, render_table, write_result
from runtime.cli import CLI_ERRORS, PLAIN, Parser, error_exit, setup_logging
from runtime.errors import InvalidArgumentError
from runtime.metrics import relative_l2

logger = logging.getLogger(__name__)

RECIPES = {"conv": ["Conv"], "conv+matmul": ["Conv", "MatMul"]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(prog="python -m benchmarks.ort_int8", description=__doc__.split("\n\n")[0].strip("`"))
    p.add_argument("--engines", type=Path, default=Path("engines/sd15-contextdiff-256"),
                   help="an engine directory built with --openvino-precision int8 (default: %(default)s)")  # fmt: skip
    p.add_argument("--calibration", type=int, default=8, help="captured UNet inputs the MinMax calibration reads (default: %(default)s)")
    p.add_argument("--runs", type=int, default=5, help="timed calls per system, interleaved (default: %(default)s)")
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/ort-int8.json"))
    return p.parse_args(argv)


def quantize_unet(onnx_path: Path, out_path: Path, feeds: list[dict[str, np.ndarray]], op_types: list[str]) -> None:
    """``onnx_path``'s int8 QDQ graph at ``out_path`` (weights in an external data file beside it)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    quantize_static(str(onnx_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                    use_external_data_format=True)  # fmt: skip


def _ort_call(path: Path) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_mem_pattern = False  # as the runtime's CPU runner
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return lambda feed: session.run(["model_output"], {k: v for k, v in feed.items() if k in names})[0]


def _openvino_call(engine_dir: Path, manifest_json: dict[str, Any]) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    import openvino as ov

    entry = manifest_json["components"]["unet"].get("openvino")
    if not entry:
        raise InvalidArgumentError("--engines", str(engine_dir), "an engine directory built with --openvino-precision int8")
    compiled = ov.Core().compile_model(str(engine_dir / entry["file"]), "CPU")
    request = compiled.create_infer_request()
    return lambda feed: np.array(request.infer(feed)[compiled.output("model_output")])


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    from export.openvino_int8 import BUILTIN_PROMPTS, CalibrationSettings, capture_unet_inputs, read_prompts
    from runtime.manifest import load_manifest
    from runtime.specs import Component

    manifest = load_manifest(args.engines)  # a directory without one is refused, naming it
    prompts = read_prompts(BUILTIN_PROMPTS)[:2]  # the int8 build's own prompt list for non-shapes models
    settings = CalibrationSettings(prompts, steps=-(-(args.calibration + 1) // len(prompts)), subset_size=args.calibration + 1)
    feeds = capture_unet_inputs(manifest, settings)[Component.UNET]
    calibration, probe = feeds[:-1], feeds[-1]
    fp32_path = manifest.components[Component.UNET].onnx
    systems: dict[str, Callable[[dict[str, np.ndarray]], np.ndarray]] = {"onnxruntime fp32": _ort_call(fp32_path)}
    quantize_s: dict[str, float] = {}
    for recipe in args.recipes:
        out = folder / f"unet.{recipe}.int8.onnx"
        logger.info("quantizing the UNet (%s, QDQ, %d calibration inputs) ...", recipe, len(calibration))
        start = time.perf_counter()
        quantize_unet(fp32_path, out, calibration, RECIPES[recipe])
        quantize_s[recipe] = time.perf_counter() - start
        systems[f"onnxruntime int8 QDQ ({recipe})"] = _ort_call(out)
    systems["openvino int8 (hybrid IR)"] = _openvino_call(args.engines, manifest.data)
    reference = systems["onnxruntime fp32"](probe)
    rows: dict[str, dict[str, Any]] = {name: {"seconds": [], "relative_l2": relative_l2(call(probe), reference)} for name, call in systems.items()}

    def timed(name: str) -> None:
        start = time.perf_counter()
        systems[name](probe)
        rows[name]["seconds"].append(time.perf_counter() - start)

    for name in systems:  # warm-up
        systems[name](probe)
    interleave(list(systems), args.runs, timed, label="")
    for name, row in rows.items():
        row["median_s"] = statistics.median(row["seconds"])
        row["vs_fp32"] = row["median_s"] / statistics.median(rows["onnxruntime fp32"]["seconds"])
    shape = {k: list(v.shape) for k, v in probe.items()}
    return {"machine": machine(), "engines": str(args.engines), "input_shapes": shape, "calibration_inputs": len(calibration),
            "quantize_s": quantize_s, "runs": args.runs, "systems": rows}  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    rows = [[name, f"{r['median_s']:.3f}", f"{r['vs_fp32']:.2f}", f"{r['relative_l2']:.2e}"] for name, r in result["systems"].items()]
    return render_table(["system (one UNet call)", "median s", "× ONNX Runtime fp32", "relative L2 vs fp32"], rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(PLAIN)
    for noisy in ("nncf", "onnxruntime"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        for name in ("calibration", "runs"):
            if getattr(args, name) < 1:
                raise InvalidArgumentError(f"--{name}", getattr(args, name), "a positive integer")
        with tempfile.TemporaryDirectory(prefix="contextdiff-ort-int8-") as folder:
            result = run(args, Path(folder))
    except CLI_ERRORS as exc:
        return error_exit(exc)
    return write_result(result, args.out, markdown(result))


if __name__ == "__main__":
    sys.exit(main())

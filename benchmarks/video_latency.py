"""Video-edit latency (``python -m benchmarks.latency --video``): the reference ``VideoEditPipeline`` against
``runtime.VideoEditor`` on the backends this machine has, for one edit (inversion + sampling) of the embedded
default video model's source clip, interleaved runs, per-stage times. Writes JSON and prints a markdown table.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks.harness import System, not_run_rows, percentiles, render_table, stages_ms, time_runs, warm_up
from benchmarks.timing import Timer, instrument_generator, instrument_pipeline

logger = logging.getLogger("benchmarks.video_latency")

# The edit docs/guides/video-editing.md shows: the default video model's source clip (evaluation clip 0), its circle edit, with the
# evaluation's settings (benchmarks.video_evaluation).
EDIT = "a magenta circle moving from the top right to the bottom right"
SETTINGS = {"strength": 0.93, "guidance_scale": 15.0}


def _instrument_edit(editor: Any, timer: Timer) -> Callable[..., np.ndarray]:
    """Time the edit's two loops (``invert`` includes encoding the frames; ``sample`` includes decoding)."""
    editor.invert = timer.wrap("inversion", editor.invert)
    editor.sample = timer.wrap("sampling", editor.sample)
    return editor.edit


def systems(model_dir: Path, workdir: Path, steps: int) -> tuple[list[System], dict[str, str], int]:
    """The reference, then the runtime on ONNX Runtime fp32 and fp16 and OpenVINO where it runs; the skipped systems
    and why; the frame count. Each system's ``run`` is one edit, returning the edited frames (F, H, W, 3)."""
    from contextdiff_ref.video.pipeline import VideoEditPipeline
    from export.build import BuildOptions, build_engine_dir
    from runtime.backends.openvino import openvino_unavailable_reason
    from runtime.options import ONNX_OPENVINO_PRECISIONS, BuildBackend, Precision
    from runtime.video_editor import VideoEditor
    from runtime.video_io import read_video

    video = read_video(model_dir / "source.gif")
    source = (model_dir / "source.txt").read_text(encoding="utf-8").strip()
    call = dict(num_inference_steps=steps, negative_prompt=source, progress=False, **SETTINGS)
    out, skipped = [], {}

    def add(name: str, editor: Any, instrument: Callable[[Any, Timer], None]) -> None:
        timer = Timer()
        instrument(editor.generator if hasattr(editor, "generator") else editor.pipe, timer)
        edit = _instrument_edit(editor, timer)
        out.append(System(name, lambda: edit(video, source, EDIT, **call), timer))

    add("reference (eager PyTorch)", VideoEditPipeline.from_pretrained(model_dir), instrument_pipeline)
    for precision in (Precision.FP32, Precision.FP16):
        engines = workdir / f"engines-{precision.value}"
        build_engine_dir(model_dir, engines, BuildOptions(backend=BuildBackend.ONNXRUNTIME, precision=precision))
        editor = VideoEditor.from_dir(engines, backend="onnxruntime-cpu")
        add(f"runtime {editor.backend} {precision.value}", editor, instrument_generator)
        if precision is Precision.FP32:
            for ov in ONNX_OPENVINO_PRECISIONS:
                name = f"runtime openvino {ov.value}"
                if why := openvino_unavailable_reason(ov):
                    skipped[name] = why
                    continue
                add(name, VideoEditor.from_dir(engines, backend="openvino", precision=ov), instrument_generator)
    return out, skipped, int(video.shape[0])


def _summary(system: System, reference: float, frames: int, steps: int) -> dict[str, Any]:
    e2e = np.array(system.e2e)
    samples = system.timer.samples
    return {
        "runs": len(e2e), "mean_s": float(e2e.mean()), **percentiles(e2e, (50, 90)),
        "frames_per_s": frames / float(e2e.mean()), "vs_reference": float(e2e.mean()) / reference,
        "stages_ms": stages_ms(samples),  # per call: inversion / sampling per edit
        "calls_per_edit": {k: len(v) / len(e2e) for k, v in samples.items()},
    }  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    header = ["system", "mean s", "p50 s", "p90 s", "× reference", "inversion s", "sampling s", "UNet ms/call", "adapter ms/call", "text ms/call"]
    rows = []
    for name, s in result["systems"].items():
        st = s["stages_ms"]
        cells = ["–" if k not in st else f"{st[k] * scale:.2f}" for k, scale in (("inversion", 1e-3), ("sampling", 1e-3), ("unet", 1), ("adapter", 1), ("text", 1))]
        rows.append([name, f"{s['mean_s']:.3f}", f"{s['p50_s']:.3f}", f"{s['p90_s']:.3f}", f"{s['vs_reference']:.2f}", *cells])
    return render_table(header, rows + not_run_rows(result.get("skipped", {})))


def run(args: argparse.Namespace, workdir: Path, machine: dict[str, Any]) -> dict[str, Any]:
    """Warm-up, then interleaved timed runs (A B C A B C ...) so drift hits all systems alike."""
    from contextdiff_ref.models.defaults import default_video_model_dir
    from contextdiff_ref.models.model_dir import quiet_loading

    quiet_loading()
    model_dir = Path(args.model) if args.model else default_video_model_dir()
    edit_systems, skipped, frames = systems(model_dir, workdir, args.steps)
    warm_up(edit_systems, args.warmup)
    time_runs(edit_systems, args.runs)
    reference = float(np.mean(edit_systems[0].e2e))
    return {
        "machine": machine,
        "config": {"model": args.model or "embedded default video model", "task": "video edit (inversion + sampling)", "frames": frames,
                   "steps": args.steps, "edit": EDIT, **SETTINGS, "warmup": args.warmup, "runs": args.runs},
        "systems": {s.name: _summary(s, reference, frames, args.steps) for s in edit_systems},
        "skipped": skipped,
    }  # fmt: skip

"""A Stable-Diffusion-1.5-class model on the CPU, one interleaved run: diffusers' own ``StableDiffusionPipeline`` (DDIM,
eager torch, the same UNet / text encoder / VAE weights, no adapter) vs the reference pipeline vs ``runtime.Generator``
on ONNX Runtime fp32 and on OpenVINO (f32, and bf16 where the CPU has it) over the same artifacts, at each size,
guidance on, batch 1. Writes JSON and prints a markdown table.

Each system lives in its own worker process, so the peak RSS reported is that system's alone; runs are interleaved
across the workers (A B C A B C ...) so drift hits all alike, one at a time, with a pause between runs so no worker's
idle threads spin into the next one's. Seconds per step are measured from step end to step end (the first step from
the end of text encoding) — the denoising loop alone, without text encoding and decoding, which are reported apart.

    python -m benchmarks.sd15_cpu --sizes 256 512 --steps 3 --runs 3
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks.harness import cell, interleave, machine, not_run_rows, render_table, stages_ms, write_result
from runtime.cli import PLAIN, Parser, setup_logging

logger = logging.getLogger("benchmarks.sd15_cpu")

SYSTEMS = ("diffusers StableDiffusionPipeline (DDIM, eager)", "reference (eager PyTorch)", "runtime onnxruntime-cpu fp32", "runtime openvino f32",
           "runtime openvino bf16")  # fmt: skip
RUNTIME_BACKENDS = {SYSTEMS[2]: ("onnxruntime-cpu", None), SYSTEMS[3]: ("openvino", "f32"), SYSTEMS[4]: ("openvino", "bf16")}
PROMPT = "a photograph of an astronaut riding a horse"


def _diffusers(model_dir: Path, timer: Any) -> Callable[[dict[str, Any]], Any]:
    """diffusers' own pipeline assembled from the model directory's text encoder, tokenizer, UNet, VAE and scheduler
    config (its model_index.json names our pipeline class, so it is not loaded through it)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    config = {k: v for k, v in json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text()).items() if k != "shift_schedule"}
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(model_dir / "vae"), text_encoder=CLIPTextModel.from_pretrained(model_dir / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(model_dir / "tokenizer"), unet=UNet2DConditionModel.from_pretrained(model_dir / "unet"),
        scheduler=DDIMScheduler.from_config(config), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    pipe.encode_prompt = timer.wrap("text", pipe.encode_prompt, starts_loop=True)
    pipe.unet.forward = timer.wrap("unet", pipe.unet.forward)
    pipe.vae.decode = timer.wrap("decode", pipe.vae.decode)

    def run(call: dict[str, Any]) -> Any:
        with torch.inference_mode():
            return pipe(PROMPT, height=call["size"], width=call["size"], num_inference_steps=call["steps"], guidance_scale=call["guidance"],
                        generator=torch.Generator().manual_seed(0), output_type="np",
                        callback_on_step_end=lambda *a: (timer.on_step(None), a[3])[1]).images  # fmt: skip

    return run


def _reference(model_dir: Path, timer: Any) -> Callable[[dict[str, Any]], Any]:
    from benchmarks.timing import instrument_pipeline
    from contextdiff_ref.pipelines.text_to_image import ContextDiffPipeline

    pipe = ContextDiffPipeline.from_pretrained(model_dir)
    instrument_pipeline(pipe, timer)
    return lambda call: pipe.run_timed(PROMPT, height=call["size"], width=call["size"], num_inference_steps=call["steps"],
                                       guidance_scale=call["guidance"], seed=0, progress=False).images  # fmt: skip


def _runtime(engine_dir: Path, timer: Any, backend: str, precision: str | None) -> Callable[[dict[str, Any]], Any]:
    from benchmarks.timing import instrument_generator
    from runtime.generator import Generator

    gen = Generator.from_dir(engine_dir, backend=backend, precision=precision)
    instrument_generator(gen, timer)
    return lambda call: gen.run_timed(PROMPT, num_inference_steps=call["steps"], guidance_scale=call["guidance"], seed=0, progress=False).images


def _worker(conn: Any, system: str, model_dir: Path, engine_dir: Path) -> None:
    """One system in its own process: load it, then answer "run" (one timed generation) until "stop" (peak RSS)."""
    try:
        from benchmarks.timing import Timer
        from contextdiff_ref.models.model_dir import quiet_loading

        quiet_loading()
        timer = Timer()
        start = time.perf_counter()
        if system in RUNTIME_BACKENDS:
            run = _runtime(engine_dir, timer, *RUNTIME_BACKENDS[system])
        else:
            run = {SYSTEMS[0]: lambda: _diffusers(model_dir, timer), SYSTEMS[1]: lambda: _reference(model_dir, timer)}[system]()
        conn.send({"load_s": time.perf_counter() - start})
        while (call := conn.recv()) is not None:
            timer.reset()
            start = time.perf_counter()
            images = run(call)
            conn.send({"e2e_s": time.perf_counter() - start, "stages": {k: list(v) for k, v in timer.samples.items()},
                       "finite": bool(np.all(np.isfinite(images)))})  # fmt: skip
        conn.send({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **_rss_split()})
    except Exception as exc:  # reported to the driver, which stops with one line
        conn.send({"error": f"{system}: {type(exc).__name__}: {exc}"})


def _rss_split() -> dict[str, float]:
    """Resident memory now, split (Linux): anonymous (the process's own) and file-backed (memory-mapped files: model
    weights, artifacts or compiled-model blobs mapped read-only, which the kernel can drop and re-read under pressure)."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return {"end_rss_anon_mib": int(fields["RssAnon"].split()[0]) / 1024, "end_rss_file_mib": int(fields["RssFile"].split()[0]) / 1024}
    except (OSError, KeyError, ValueError):
        return {}


def _ask(conn: Any, message: Any = "noop") -> dict[str, Any]:
    if message != "noop":
        conn.send(message)
    reply = conn.recv()
    if "error" in reply:
        raise RuntimeError(reply["error"])
    return reply


def available_systems() -> tuple[list[str], dict[str, str]]:
    """The systems this machine runs, and why the others cannot run here (OpenVINO missing, or a CPU without bf16)."""
    from runtime.backends.openvino import openvino_unavailable_reason
    from runtime.options import OpenVINOPrecision

    openvino = {SYSTEMS[3]: OpenVINOPrecision.F32, SYSTEMS[4]: OpenVINOPrecision.BF16}
    skipped = {name: why for name, precision in openvino.items() if (why := openvino_unavailable_reason(precision))}
    return [s for s in SYSTEMS if s not in skipped], skipped


def bench_size(model_dir: Path, engine_dir: Path, size: int, args: argparse.Namespace, systems: list[str]) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    workers, loads = {}, {}
    try:
        for system in systems:  # loaded one after the other, so no load competes with another
            parent, child = ctx.Pipe()
            process = ctx.Process(target=_worker, args=(child, system, model_dir, engine_dir), daemon=True)
            process.start()
            workers[system] = (process, parent)
            loads[system] = _ask(parent)["load_s"]
        call = {"size": size, "steps": args.steps, "guidance": args.guidance}
        interleave(list(workers.values()), args.warmup, lambda worker: _ask(worker[1], call), label=None)
        samples: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}

        def timed(system: str) -> None:
            time.sleep(args.pause)
            samples[system].append(_ask(workers[system][1], call))

        interleave(list(workers), args.runs, timed, label=f"{size} px: ")
        peaks = {system: _ask(conn, None) for system, (_, conn) in workers.items()}
    finally:
        for process, _ in workers.values():
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    return {system: _summary(samples[system], loads[system], peaks[system]) for system in systems}


def _summary(runs: list[dict[str, Any]], load_s: float, memory: dict[str, float]) -> dict[str, Any]:
    stages: dict[str, list[float]] = {}
    for run in runs:
        for k, v in run["stages"].items():
            stages.setdefault(k, []).extend(v)
    e2e, steps = np.array([r["e2e_s"] for r in runs]), np.array(stages["step"])
    return {"runs": len(runs), "load_s": load_s, **memory, "all_finite": all(r["finite"] for r in runs),
            "s_per_step_mean": float(steps.mean()), "s_per_step_p50": float(np.median(steps)), "s_per_step_min": float(steps.min()),
            "s_per_step_max": float(steps.max()), "e2e_s_mean": float(e2e.mean()),
            "stages_ms": stages_ms(stages, skip=("step",))}  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    header = ["size", "system", "s / step", "× diffusers per step", "e2e s", "text ms", "UNet ms/call", "adapter ms/call", "decode ms", "peak RSS GiB",
              "× diffusers RSS", "end RSS anon / file-backed GiB"]  # fmt: skip
    rows = []
    for size, systems in result["sizes"].items():
        base = systems[SYSTEMS[0]]
        for name, s in systems.items():
            st = s["stages_ms"]
            rows.append([size, name, f"{s['s_per_step_mean']:.2f}", f"{s['s_per_step_mean'] / base['s_per_step_mean']:.2f}", f"{s['e2e_s_mean']:.1f}",
                         cell(st.get("text"), ".0f"), cell(st.get("unet"), ".0f"), cell(st.get("adapter"), ".0f"), cell(st.get("decode"), ".0f"),
                         f"{s['peak_rss_mib'] / 1024:.2f}", f"{s['peak_rss_mib'] / base['peak_rss_mib']:.2f}",
                         f"{cell(s.get('end_rss_anon_mib', 0) / 1024 or None, '.2f')} / {cell(s.get('end_rss_file_mib', 0) / 1024 or None, '.2f')}"])  # fmt: skip
    return render_table(header, rows + not_run_rows(result.get("skipped", {}), "all"))


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """Issue 17's targets per size: OpenVINO f32 no slower than ONNX Runtime per step; OpenVINO bf16 <= 0.5 x diffusers
    per step (at 256 px). None where a system did not run."""
    out = {}
    for size, systems in result["sizes"].items():
        step = {name: s["s_per_step_mean"] for name, s in systems.items()}
        ov_vs_ort = step[SYSTEMS[3]] / step[SYSTEMS[2]] if SYSTEMS[3] in step else None
        bf16_vs_diffusers = step[SYSTEMS[4]] / step[SYSTEMS[0]] if SYSTEMS[4] in step else None
        out[size] = {"openvino_f32_over_onnxruntime_per_step": ov_vs_ort, "openvino_f32_no_slower": None if ov_vs_ort is None else ov_vs_ort <= 1.0,
                     "openvino_bf16_over_diffusers_per_step": bf16_vs_diffusers,
                     "openvino_bf16_at_most_half": None if bf16_vs_diffusers is None else bf16_vs_diffusers <= 0.5}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m benchmarks.sd15_cpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=Path("models/sd15-contextdiff"), help="model directory; written if absent (default: %(default)s)")
    p.add_argument("--engines-root", type=Path, default=Path("engines"), help="engine directories <root>/<model>-<size> (built or reused)")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--pause", type=float, default=1.0, help="seconds between runs (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/sd15-cpu.json"))
    args = p.parse_args(argv)
    if args.steps < 2 or args.runs < 1 or args.warmup < 0 or any(s < 64 or s % 64 for s in args.sizes):
        p.error("--steps must be >= 2 (steps are timed end to end), --runs >= 1, --warmup >= 0, --sizes multiples of 64")
    setup_logging(PLAIN)
    from contextdiff_ref.models.model_dir import quiet_loading
    from contextdiff_ref.models.sd15 import write_sd15_model_dir
    from export.build import BuildOptions, build_engine_dir
    from runtime.errors import ContextDiffError
    from runtime.options import BuildBackend, Precision

    quiet_loading()
    result: dict[str, Any] = {
        "machine": machine(cpu_count=multiprocessing.cpu_count()),
        "config": {"model": str(args.model), "steps": args.steps, "guidance": args.guidance, "batch": 1, "warmup": args.warmup, "runs": args.runs,
                   "prompt": PROMPT},
        "sizes": {},
    }  # fmt: skip
    systems, result["skipped"] = available_systems()
    try:
        if not args.model.is_dir():
            logger.info("writing the SD-1.5-class model directory %s ...", args.model)
            write_sd15_model_dir(args.model)
        for size in args.sizes:
            engine_dir = args.engines_root / f"{args.model.resolve().name}-{size}"
            build_engine_dir(args.model, engine_dir, BuildOptions(backend=BuildBackend.ONNXRUNTIME, precision=Precision.FP32, height=size, width=size))
            result["sizes"][str(size)] = bench_size(args.model.resolve(), engine_dir.resolve(), size, args, systems)
    except (ContextDiffError, RuntimeError, OSError) as exc:
        p.exit(2, f"error: {exc}\n")
    result["targets"] = targets(result)
    return write_result(result, args.out, markdown(result))


if __name__ == "__main__":
    sys.exit(main())

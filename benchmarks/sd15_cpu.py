"""A Stable-Diffusion-1.5-class model on the CPU, one interleaved run: diffusers' own ``StableDiffusionPipeline`` (DDIM,
eager torch, the same UNet / text encoder / VAE weights, no adapter) vs the reference pipeline vs ``runtime.Generator``
on ONNX Runtime fp32 and on OpenVINO (f32, and bf16 where the CPU has it) over the same artifacts, at each size,
guidance on, batch 1; ``--systems`` adds OpenVINO int8 (the build's int8 IR: export/openvino_int8.py) and step caching
(``--cache-interval``, default 3) at each OpenVINO precision. Writes JSON and prints a markdown table.

Distance to the limit: each row's achieved GFLOP/s is the FLOPs its denoising loop computes (counted by torch's FLOP
counter from the model's configs: benchmarks/models.py; full and shallow UNet calls and adapter calls as the system
makes them) over the loop's measured seconds, set against this CPU's matmul peak measured in the same run
(``benchmarks.models.cpu_matmul_peaks``: f32, bf16, int8) at the row's precision; "effective" GFLOP/s counts the exact
path's FLOPs instead (step caching skips some, so it can exceed what the CPU computes).

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
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks.harness import cell, interleave, machine, peak_rss_mib, not_run_rows, render_table, stages_ms, write_result
from runtime.cli import PLAIN, Parser, setup_logging
from runtime.step_cache import DEFAULT_BRANCH

logger = logging.getLogger("benchmarks.sd15_cpu")

SYSTEMS = ("diffusers StableDiffusionPipeline (DDIM, eager)", "reference (eager PyTorch)", "runtime onnxruntime-cpu fp32", "runtime openvino f32",
           "runtime openvino bf16")  # fmt: skip
RUNTIME_BACKENDS = {SYSTEMS[2]: ("onnxruntime-cpu", None), SYSTEMS[3]: ("openvino", "f32"), SYSTEMS[4]: ("openvino", "bf16")}
# --systems keys: the five above (the default), OpenVINO int8, and each OpenVINO precision with step caching
SYSTEM_KEYS = {"diffusers": SYSTEMS[0], "reference": SYSTEMS[1], "onnxruntime": SYSTEMS[2], "openvino-f32": SYSTEMS[3], "openvino-bf16": SYSTEMS[4],
               "openvino-int8": "runtime openvino int8", "openvino-f32-cache": "runtime openvino f32 + step cache",
               "openvino-bf16-cache": "runtime openvino bf16 + step cache", "openvino-int8-cache": "runtime openvino int8 + step cache"}  # fmt: skip
DEFAULT_SYSTEMS = ("diffusers", "reference", "onnxruntime", "openvino-f32", "openvino-bf16")
PROMPT = "a photograph of an astronaut riding a horse"


def system_plan(name: str, cache_interval: int) -> tuple[str | None, str | None, int]:
    """(runtime backend or None for diffusers/the reference, OpenVINO precision or None, cache interval) of a system."""
    if name in RUNTIME_BACKENDS:
        return (*RUNTIME_BACKENDS[name], 1)
    if name.startswith("runtime openvino "):
        precision = name.split()[2]
        return "openvino", precision, cache_interval if name.endswith("+ step cache") else 1
    return None, None, 1


def peak_kind(name: str) -> str:
    """Which measured matmul peak a system's row is set against: its OpenVINO precision's, else f32's."""
    precision = system_plan(name, 1)[1]
    return precision if precision in ("bf16", "int8") else "f32"


def loop_flops(name: str, flops: dict[str, int], steps: int, cache_interval: int, adapter_calls_per_step: float) -> tuple[float, float]:
    """(FLOPs the system's denoising loop computes, the exact path's FLOPs) for ``steps`` steps: full UNet calls on
    steps 0, k, 2k, ... and shallow ones between (step caching), adapter calls as measured (diffusers: none)."""
    _, _, k = system_plan(name, cache_interval)
    full = len(range(0, steps, k))
    adapter = adapter_calls_per_step * steps * flops["adapter"]
    exact = steps * flops["unet"] + adapter
    return full * flops["unet"] + (steps - full) * flops["unet_shallow"] + adapter, exact


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


def _runtime(engine_dir: Path, timer: Any, backend: str, precision: str | None, cache_interval: int = 1) -> Callable[[dict[str, Any]], Any]:
    from benchmarks.timing import instrument_generator
    from runtime.generator import Generator

    gen = Generator.from_dir(engine_dir, backend=backend, precision=precision)
    instrument_generator(gen, timer)
    return lambda call: gen.run_timed(PROMPT, num_inference_steps=call["steps"], guidance_scale=call["guidance"], seed=0, progress=False,
                                      cache_interval=cache_interval).images  # fmt: skip


def _worker(conn: Any, system: str, model_dir: Path, engine_dir: Path, cache_interval: int = 1) -> None:
    """One system in its own process: load it, then answer "run" (one timed generation) until "stop" (peak RSS)."""
    try:
        from benchmarks.timing import Timer
        from contextdiff_ref.models.model_dir import quiet_loading

        quiet_loading()
        timer = Timer()
        start = time.perf_counter()
        backend, precision, interval = system_plan(system, cache_interval)
        if backend is not None:
            run = _runtime(engine_dir, timer, backend, precision, interval)
        else:
            run = {SYSTEMS[0]: lambda: _diffusers(model_dir, timer), SYSTEMS[1]: lambda: _reference(model_dir, timer)}[system]()
        conn.send({"load_s": time.perf_counter() - start})
        while (call := conn.recv()) is not None:
            timer.reset()
            start = time.perf_counter()
            images = run(call)
            conn.send({"e2e_s": time.perf_counter() - start, "stages": {k: list(v) for k, v in timer.samples.items()},
                       "finite": bool(np.all(np.isfinite(images)))})  # fmt: skip
        conn.send({"peak_rss_mib": peak_rss_mib(), **_rss_split()})
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


def available_systems(keys: tuple[str, ...] = DEFAULT_SYSTEMS) -> tuple[list[str], dict[str, str]]:
    """The systems of ``keys`` (SYSTEM_KEYS) this machine runs, and why the others cannot run here (OpenVINO missing,
    or a CPU without bf16). int8 runs wherever OpenVINO does; where the CPU cannot gain from it, the worker's log says so."""
    from runtime.backends.openvino import openvino_unavailable_reason
    from runtime.options import OpenVINOPrecision

    names = [SYSTEM_KEYS[k] for k in keys]
    skipped = {}
    for name in names:
        precision = system_plan(name, 1)[1] if system_plan(name, 1)[0] == "openvino" else None
        if precision is not None and (why := openvino_unavailable_reason(OpenVINOPrecision(precision))):
            skipped[name] = why
    return [s for s in names if s not in skipped], skipped


def bench_size(model_dir: Path, engine_dir: Path, size: int, args: argparse.Namespace, systems: list[str]) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    workers, loads = {}, {}
    try:
        for system in systems:  # loaded one after the other, so no load competes with another
            parent, child = ctx.Pipe()
            process = ctx.Process(target=_worker, args=(child, system, model_dir, engine_dir, args.cache_interval), daemon=True)
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


def add_flop_rates(rows: dict[str, dict[str, Any]], flops: dict[str, int], peaks: dict[str, float], steps: int, cache_interval: int) -> None:
    """Each row's achieved and effective GFLOP/s of its denoising loop, and the fraction of its precision's matmul peak."""
    for name, row in rows.items():
        adapter_calls = row.get("adapter_calls_per_step", 0.0)
        executed, exact = loop_flops(name, flops, steps, cache_interval, adapter_calls)
        loop_s = row["s_per_step_mean"] * steps
        kind = peak_kind(name)
        row.update(loop_gflop=executed / 1e9, achieved_gflops=executed / loop_s / 1e9, effective_gflops=exact / loop_s / 1e9, peak_kind=kind,
                   fraction_of_peak=executed / loop_s / 1e9 / peaks[kind], fraction_of_f32_peak=executed / loop_s / 1e9 / peaks["f32"])  # fmt: skip


def _summary(runs: list[dict[str, Any]], load_s: float, memory: dict[str, float]) -> dict[str, Any]:
    stages: dict[str, list[float]] = {}
    for run in runs:
        for k, v in run["stages"].items():
            stages.setdefault(k, []).extend(v)
    e2e, steps = np.array([r["e2e_s"] for r in runs]), np.array(stages["step"])
    return {"runs": len(runs), "load_s": load_s, **memory, "all_finite": all(r["finite"] for r in runs),
            "s_per_step_mean": float(steps.mean()), "s_per_step_p50": float(np.median(steps)), "s_per_step_min": float(steps.min()),
            "s_per_step_max": float(steps.max()), "e2e_s_mean": float(e2e.mean()),
            "adapter_calls_per_step": len(stages.get("adapter", [])) / len(steps),
            "stages_ms": stages_ms(stages, skip=("step",))}  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    header = ["size", "system", "s / step", "× diffusers per step", "e2e s", "text ms", "UNet ms/call", "adapter ms/call", "decode ms",
              "achieved GFLOP/s", "of peak", "peak RSS GiB", "× diffusers RSS", "end RSS anon / file-backed GiB"]  # fmt: skip
    rows = []
    for size, systems in result["sizes"].items():
        base = systems.get(SYSTEMS[0])  # diffusers: the yardstick of the × columns (absent: "–")
        for name, s in systems.items():
            st = s["stages_ms"]
            rows.append([size, name, f"{s['s_per_step_mean']:.2f}", cell(base and s['s_per_step_mean'] / base['s_per_step_mean'], ".2f"), f"{s['e2e_s_mean']:.1f}",
                         cell(st.get("text"), ".0f"), cell(st.get("unet"), ".0f"), cell(st.get("adapter"), ".0f"), cell(st.get("decode"), ".0f"),
                         cell(s.get("achieved_gflops"), ".0f"), f"{cell(s.get('fraction_of_peak'), '.0%')} {s.get('peak_kind', '')}".strip(),
                         f"{s['peak_rss_mib'] / 1024:.2f}", cell(base and s['peak_rss_mib'] / base['peak_rss_mib'], ".2f"),
                         f"{cell(s.get('end_rss_anon_mib', 0) / 1024 or None, '.2f')} / {cell(s.get('end_rss_file_mib', 0) / 1024 or None, '.2f')}"])  # fmt: skip
    peaks = result.get("matmul_peak_gflops")
    note = "" if not peaks else "\n\nMeasured matmul peaks (GFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items())
    return render_table(header, rows + not_run_rows(result.get("skipped", {}), "all")) + note


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """Issue 17's targets per size: OpenVINO f32 no slower than ONNX Runtime per step; OpenVINO bf16 <= 0.5 x diffusers
    per step (at 256 px). None where a system did not run."""
    out = {}
    for size, systems in result["sizes"].items():
        step = {name: s["s_per_step_mean"] for name, s in systems.items()}
        if SYSTEMS[0] not in step or SYSTEMS[2] not in step:  # a subset of systems (--systems): no targets
            continue
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
    p.add_argument("--systems", nargs="+", choices=list(SYSTEM_KEYS), default=list(DEFAULT_SYSTEMS), help="default: %(default)s")
    p.add_argument("--cache-interval", type=int, default=3, help="the step-cache systems' interval (default: %(default)s)")
    p.add_argument("--cache-branch", type=int, default=DEFAULT_BRANCH,
                   help="the skip branch the step-cache systems' UNet is split at (build_engines.py --step-cache-branch; default: %(default)s)")
    p.add_argument("--calibration-steps", type=int, default=None, help="int8 systems: denoising steps per calibration prompt (default: the build's)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/sd15-cpu.json"))
    args = p.parse_args(argv)
    if args.steps < 2 or args.runs < 1 or args.warmup < 0 or any(s < 64 or s % 64 for s in args.sizes):
        p.error("--steps must be >= 2 (steps are timed end to end), --runs >= 1, --warmup >= 0, --sizes multiples of 64")
    if args.cache_interval < 2:
        p.error(f"--cache-interval must be >= 2 (got {args.cache_interval}; 1 is the exact path)")
    setup_logging(PLAIN)
    from contextdiff_ref.models.model_dir import quiet_loading
    from contextdiff_ref.models.sd15 import write_sd15_model_dir
    from benchmarks.models import cpu_matmul_peaks, model_dir_flops
    from export.build import BuildOptions, build_engine_dir
    from runtime.errors import ContextDiffError
    from runtime.options import BuildBackend, OpenVINOPrecision, Precision

    quiet_loading()
    result: dict[str, Any] = {
        "machine": machine(cpu_count=multiprocessing.cpu_count()),
        "config": {"model": str(args.model), "steps": args.steps, "guidance": args.guidance, "batch": 1, "warmup": args.warmup, "runs": args.runs,
                   "prompt": PROMPT, "cache_interval": args.cache_interval, "cache_branch": args.cache_branch},
        "sizes": {},
    }  # fmt: skip
    systems, result["skipped"] = available_systems(tuple(dict.fromkeys(args.systems)))
    step_cache, int8 = any(s.endswith("+ step cache") for s in systems), any(peak_kind(s) == "int8" for s in systems)
    calibration = {"calibration_steps": args.calibration_steps} if args.calibration_steps else {}
    try:
        if not args.model.is_dir():
            logger.info("writing the SD-1.5-class model directory %s ...", args.model)
            write_sd15_model_dir(args.model)
        logger.info("measuring this CPU's matmul peaks (f32, bf16, int8) ...")
        result["matmul_peak_gflops"] = peaks = cpu_matmul_peaks()
        for size in args.sizes:
            engine_dir = args.engines_root / f"{args.model.resolve().name}-{size}"
            build_engine_dir(args.model, engine_dir, BuildOptions(backend=BuildBackend.ONNXRUNTIME, precision=Precision.FP32, height=size, width=size,
                                                                  step_cache=step_cache, step_cache_branch=args.cache_branch, openvino_precision=OpenVINOPrecision.INT8 if int8 else OpenVINOPrecision.F32,
                                                                  **calibration))  # fmt: skip
            rows = result["sizes"][str(size)] = bench_size(args.model.resolve(), engine_dir.resolve(), size, args, systems)
            flops = model_dir_flops(args.model, size, cache_branch=args.cache_branch)
            result.setdefault("flops_per_call", {})[str(size)] = flops
            add_flop_rates(rows, flops, peaks, args.steps, args.cache_interval)
    except (ContextDiffError, RuntimeError, OSError) as exc:
        p.exit(2, f"error: {exc}\n")
    result["targets"] = targets(result)
    return write_result(result, args.out, markdown(result))


if __name__ == "__main__":
    sys.exit(main())

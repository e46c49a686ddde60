"""One command for a GPU machine: what it has, then every GPU backend that can run there — Torch CUDA (fp16, CUDA
graphs), CuPy + ONNX Runtime CUDA, TensorRT (full and lean runtime) — on the embedded default model and the
SD-1.5-class model: parity against the CPU reference (PSNR of the images) and latency (p50/p90/p99 end to end,
per stage, achieved TFLOP/s, device memory), next to diffusers' eager loop. Writes gpu_check.json and gpu_check.md.

    python -m benchmarks.gpu_check --out results/gpu                       # both models, 50 steps
    python -m benchmarks.gpu_check --out results/gpu --models sd15 --runs 10
    python -m benchmarks.gpu_check --out /tmp/check --device cpu           # the same harness on the CPU backends

A backend that cannot run is listed with the reason; one that fails is recorded with its error and the check goes
on (exit status 1). End-to-end runs are uninstrumented and interleaved across systems; per-stage times come from
separate, synchronised runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks.environment import environment, markdown as environment_markdown
from benchmarks.harness import System, cell, not_run_rows, percentiles, render_table, stages_ms, time_runs
from runtime.backends import cuda_driver
from runtime.cli import Parser, setup_logging
from runtime.files import atomic_write_json, atomic_write_text
from runtime.metrics import psnr

logger = logging.getLogger("benchmarks.gpu_check")
GOAL = {"model": "sd15", "steps": 50, "vs_diffusers": 0.5, "seconds": 0.5}  # issue 12: SD-1.5 512 x 512, 50 steps, fp16, one H100


@dataclass
class Candidate:
    name: str
    why_not: str | None  # None: it can run here
    make: Callable[[Path, Path], Any]  # (model dir, work dir) -> runtime.Generator


def _engines(model_dir: Path, work: Path, backend: str, precision: str, lean: bool = False) -> Path:
    from export.build import BuildOptions, build_engine_dir
    from runtime.options import BuildBackend, PlanRuntime, Precision

    out = work / f"engines-{model_dir.name}-{backend}-{precision}{'-lean' if lean else ''}"
    runtime_kind = PlanRuntime.LEAN if lean else PlanRuntime.FULL
    build_engine_dir(model_dir, out, BuildOptions(backend=BuildBackend(backend), precision=Precision(precision), tensorrt_runtime=runtime_kind))
    return out


def candidates(env: dict[str, Any], device: str) -> list[Candidate]:
    """The runtime backends to check, each with the reason it cannot run here (or None)."""
    from contextdiff_ref.pipelines.torch_runner import torch_generator
    from export.tensorrt_build import tensorrt_status
    from runtime.generator import Generator

    def generator(backend: str, precision: str, runner: str, lean: bool = False) -> Callable[[Path, Path], Any]:
        return lambda model, work: Generator.from_dir(_engines(model, work, backend, precision, lean), backend=runner)

    if device == "cpu":
        return [
            Candidate("torch cpu fp32", None, lambda m, w: torch_generator(m, _engines(m, w, "onnxruntime", "fp32"), device="cpu")),
            Candidate("onnxruntime cpu fp32", None, generator("onnxruntime", "fp32", "onnxruntime-cpu")),
        ]
    packages = env["packages"]
    no_gpu = None if env["gpus"] else f"no GPU ({env['gpu_error']})"
    no_cupy = None if packages["cupy"]["ok"] else f"CuPy does not import ({packages['cupy']['error']})"
    torch_cuda = env.get("torch_cuda", {}).get("available")
    trt_version, trt_reason = tensorrt_status()
    lean_ok = packages["tensorrt_lean"]["ok"] or packages["tensorrt_lean_bindings"]["ok"]
    reasons = {
        "torch cuda fp16 + CUDA graphs": no_gpu or no_cupy or (None if torch_cuda else "torch has no CUDA (a CPU build?)"),
        "onnxruntime cuda fp16": no_gpu or no_cupy or (None if env.get("onnxruntime_gpu") else "onnxruntime has no CUDAExecutionProvider (the CPU build; install onnxruntime-gpu)"),
        "tensorrt fp16": no_gpu or no_cupy or (None if trt_version else trt_reason),
        "tensorrt lean fp16": no_gpu or no_cupy or (None if trt_version and lean_ok else trt_reason or "the TensorRT lean runtime does not import"),
    }  # fmt: skip
    makers = {
        "torch cuda fp16 + CUDA graphs": lambda m, w: torch_generator(m, _engines(m, w, "onnxruntime", "fp32"), device="cuda", fp16=True),
        "onnxruntime cuda fp16": generator("onnxruntime", "fp16", "onnxruntime-cuda"),
        "tensorrt fp16": generator("tensorrt", "fp16", "tensorrt"),
        "tensorrt lean fp16": generator("tensorrt", "fp16", "tensorrt", lean=True),
    }
    return [Candidate(name, reasons[name], makers[name]) for name in makers]


def _memory(device: str) -> int:
    return cuda_driver.memory_in_use(0) if device == "cuda" else 0


def _error(exc: BaseException) -> dict[str, Any]:
    return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=-6).splitlines()[-12:]}


def check_model(model_dir: Path, work: Path, env: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Parity and latency of every candidate and of the eager baselines on one model."""
    import torch

    from benchmarks.models import adapter_flops, unet_flops
    from benchmarks.timing import Timer, diffusers_ddim, instrument_generator, instrument_pipeline
    from contextdiff_ref.pipelines.text_to_image import ContextDiffPipeline

    gpu, prompts = args.device == "cuda", [args.prompt]
    parity_call = dict(num_inference_steps=args.parity_steps, guidance_scale=args.guidance, seed=0, progress=False)
    call = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, seed=0, progress=False)
    # 1. The CPU reference in fp32: the images every system is compared with, and the FLOPs per call.
    start = time.perf_counter()
    reference = ContextDiffPipeline.from_pretrained(model_dir)
    limits = reference.limits
    size = limits.default_height
    h, w = limits.default_height // limits.vae_scale_factor, limits.default_width // limits.vae_scale_factor
    expected = reference(prompts, **parity_call).images
    batch = 2 if args.guidance != 1 else 1
    flops = {"unet": unet_flops(reference.components, batch, h, w), "adapter": adapter_flops(reference.components, 2, h, w)}
    del reference
    gc.collect()
    logger.info("%s: CPU reference, %d steps: %.1f s", model_dir.name, args.parity_steps, time.perf_counter() - start)
    out: dict[str, Any] = {"model_dir": str(model_dir), "height": size, "width": limits.default_width, "unet_gflops_per_call": flops["unet"] / 1e9,
                           "adapter_gflops_per_call": flops["adapter"] / 1e9, "systems": {}, "skipped": {}}  # fmt: skip

    def parity(images: np.ndarray) -> dict[str, Any]:
        return {"image_psnr_vs_cpu_reference": psnr(images, expected), "finite": bool(np.all(np.isfinite(images)))}

    # 2. Load each system, one at a time (device memory counted as what it adds), check parity, warm up.
    systems: list[System] = []
    dtype = torch.float16 if gpu else torch.float32
    for name, make in ((f"reference eager {'fp16' if gpu else 'fp32'} (PyTorch)", "reference"), (f"diffusers eager {'fp16' if gpu else 'fp32'} (no adapter)", "baseline")):
        before = _memory(args.device)
        try:
            pipe = ContextDiffPipeline.from_pretrained(model_dir, device=args.device, torch_dtype=dtype)
            timer = Timer(gpu)
            if make == "reference":
                instrument_pipeline(pipe, timer)
                system = System(name, (lambda p: lambda: p.run_timed(prompts, **call).images)(pipe), timer, kind=make)
                system.result.update(parity(pipe(prompts, **parity_call).images))
            else:  # its PSNR says how far the adapter moves the image; for a model with r ≡ 0 it checks the reference itself
                system = System(name, (lambda p, t: lambda: diffusers_ddim(p, prompts, args.steps, args.guidance, t))(pipe, timer), timer, kind=make)
                system.result.update(parity(diffusers_ddim(pipe, prompts, args.parity_steps, args.guidance, Timer(gpu))))
            systems.append(system)
        except Exception as exc:  # a failure is recorded, and the check goes on
            out["systems"][name] = _error(exc)
            logger.error("%s: %s", name, out["systems"][name]["error"])
            continue
        _warm_up(system, args.warmup, before, args.device)
    for candidate in candidates(env, args.device):
        if candidate.why_not:
            out["skipped"][candidate.name] = candidate.why_not
            continue
        before = _memory(args.device)
        try:
            gen = candidate.make(model_dir, work)
            timer = Timer(gpu)
            result = parity(gen(prompts, **parity_call).images)
            instrument_generator(gen, timer)
            system = System(candidate.name, (lambda g: lambda: g.run_timed(prompts, **call).images)(gen), timer, kind="runtime", result=result)
            _warm_up(system, args.warmup, before, args.device)
            systems.append(system)
        except Exception as exc:
            out["systems"][candidate.name] = _error(exc)
            logger.error("%s: %s", candidate.name, out["systems"][candidate.name]["error"])
    # 3. End to end, uninstrumented and interleaved (A B C A B C ...), then per stage in separate synchronised runs.
    for system in systems:
        system.timer.active = False
    time_runs(systems, args.runs, label=f"{model_dir.name}: ")  # runs return host images: the device work is done
    for system in systems:
        system.timer.active = True
        system.timer.reset()
        for _ in range(args.stage_runs):
            system.run()
    baseline = next((np.median(s.e2e) for s in systems if s.kind == "baseline"), None)
    for system in systems:
        out["systems"][system.name] = {**system.result, **_latency(system, flops, baseline)}
    return out


def _warm_up(system: System, warmup: int, before: int, device: str) -> None:
    system.timer.active = False
    for _ in range(warmup):
        system.run()
    system.result["device_memory_added_mib"] = (_memory(device) - before) / 2**20 if device == "cuda" else None


def _latency(system: System, flops: dict[str, int], baseline: float | None) -> dict[str, Any]:
    e2e, stages = np.array(system.e2e), stages_ms(system.timer.samples)
    per_step = flops["unet"] * system.timer.calls_per_step("unet") + flops["adapter"] * system.timer.calls_per_step("adapter")
    return {
        "kind": system.kind, "runs": len(e2e), **percentiles(e2e), "mean_s": float(e2e.mean()), "stages_ms": stages,
        "unet_tflops": flops["unet"] / (stages["unet"] / 1e3) / 1e12 if stages.get("unet") else None,
        "step_tflops": per_step / (stages["step"] / 1e3) / 1e12 if stages.get("step") and per_step else None,
        "vs_diffusers_p50": float(np.percentile(e2e, 50)) / baseline if baseline else None,
    }  # fmt: skip


def goal(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any] | None:
    """Issue 12's target, judged where it applies: the SD-1.5-class model at 512 x 512, 50 steps, on a GPU."""
    model = result["models"].get(GOAL["model"])
    if args.device != "cuda" or args.steps != GOAL["steps"] or not model or "systems" not in model:
        return None
    runtimes = {n: s for n, s in model["systems"].items() if s.get("kind") == "runtime"}
    if not runtimes:
        return {"met": False, "why": "no runtime backend ran"}
    best = min(runtimes, key=lambda n: runtimes[n]["p50_s"])
    s = runtimes[best]
    met = s["vs_diffusers_p50"] is not None and s["vs_diffusers_p50"] <= GOAL["vs_diffusers"] and s["p50_s"] <= GOAL["seconds"]
    return {"best": best, "p50_s": s["p50_s"], "vs_diffusers_p50": s["vs_diffusers_p50"], "target": GOAL, "met": bool(met)}


def markdown(result: dict[str, Any]) -> str:
    lines = ["# GPU check", "", environment_markdown(result["environment"]), ""]
    if result.get("matmul_fp16_tflops"):
        lines += [f"Measured fp16 matmul peak: {result['matmul_fp16_tflops']:.0f} TFLOP/s", ""]
    for label, model in result["models"].items():
        lines += [f"## {label}", ""]
        if "error" in model:
            lines += [f"failed: {model['error']}", ""]
            continue
        header = ["system", "PSNR dB", "p50 s", "p90 s", "p99 s", "x diffusers", "text ms", "UNet ms", "adapter ms", "step ms", "decode ms", "UNet TFLOP/s",
                  "device MiB"]  # fmt: skip
        rows = []
        for name, s in model["systems"].items():
            if "error" in s:
                rows.append([name, f"failed: {s['error'][:200]}"])
                continue
            st = s["stages_ms"]
            rows.append([name, cell(s.get("image_psnr_vs_cpu_reference"), ".1f"), f"{s['p50_s']:.3f}", f"{s['p90_s']:.3f}", f"{s['p99_s']:.3f}",
                         cell(s["vs_diffusers_p50"], ".2f"), cell(st.get("text"), ".2f"), cell(st.get("unet"), ".2f"), cell(st.get("adapter"), ".2f"),
                         cell(st.get("step"), ".2f"), cell(st.get("decode"), ".1f"), cell(s["unet_tflops"], ".3g"), cell(s.get("device_memory_added_mib"), ".0f")])  # fmt: skip
        lines += [f"{model['height']} x {model['width']}, {result['config']['steps']} steps, guidance {result['config']['guidance']}, batch 1; parity over "
                  f"{result['config']['parity_steps']} steps against the CPU fp32 reference.", "",
                  render_table(header, rows + not_run_rows(model["skipped"])), ""]  # fmt: skip
    if "finetune" in result:
        f = result["finetune"]
        lines += ["## Fine-tuning (SD-1.5 class)", "", f"failed: {f['error']}" if "error" in f else
                  f"{f['settings']}: {f['images_per_second']:.2f} images/s, {f['seconds_per_step']:.3f} s/step, peak memory "
                  f"{cell(f['max_memory_gib'], '.1f')} GiB, {f['trained_parameters'] / 1e6:.0f} M parameters trained", ""]  # fmt: skip
    if result.get("goal"):
        lines += [f"Goal (SD-1.5 class, 512 x 512, 50 steps): {json.dumps(result['goal'])}", ""]
    return "\n".join(lines)


def _model_dir(label: str, work: Path) -> Path:
    from contextdiff_ref.models.defaults import default_model_dir

    if label == "default":
        return default_model_dir()
    if label == "sd15":
        from contextdiff_ref.models.sd15 import write_sd15_model_dir

        return write_sd15_model_dir(work / "sd15-contextdiff")
    return Path(label)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the check and write ``args.out``/gpu_check.json and .md (rewritten after each model: a check cut short
    still leaves what it measured)."""
    from contextdiff_ref.models.model_dir import quiet_loading

    quiet_loading()
    args.out.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if k not in ("out", "work")}
    result: dict[str, Any] = {"environment": environment(), "config": config, "models": {}}
    if args.device == "cuda" and result["environment"].get("torch_cuda", {}).get("available"):
        from benchmarks.latency import matmul_peak_tflops

        result["matmul_fp16_tflops"] = matmul_peak_tflops()
    _write(result, args.out)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-", dir=args.work))
    try:
        for label in args.models:
            try:
                result["models"][label] = check_model(_model_dir(label, work), work, result["environment"], args)
            except Exception as exc:  # the model itself (its directory, its CPU reference) failed
                result["models"][label] = _error(exc)
                logger.error("%s: %s", label, result["models"][label]["error"])
            gc.collect()
            result["goal"] = goal(result, args)
            _write(result, args.out)
        if args.finetune_steps:  # fine-tuning the SD-1.5-class model: images/s and memory (benchmarks/finetune_speed.py)
            from benchmarks.finetune_speed import measure

            try:
                sd15 = work / "sd15-contextdiff"
                result["finetune"] = measure(sd15 if sd15.is_dir() else _model_dir("sd15", work), work, steps=args.finetune_steps)
            except Exception as exc:
                result["finetune"] = _error(exc)
                logger.error("finetune: %s", result["finetune"]["error"])
            _write(result, args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _write(result: dict[str, Any], out: Path) -> None:
    atomic_write_json(out / "gpu_check.json", result, default=str)
    atomic_write_text(out / "gpu_check.md", markdown(result) + "\n")


def failures(result: dict[str, Any]) -> list[str]:
    found = [f"{label}: {m['error']}" for label, m in result["models"].items() if "error" in m]
    if "error" in result.get("finetune", {}):
        found.append(f"finetune: {result['finetune']['error']}")
    for label, model in result["models"].items():
        found += [f"{label} / {name}: {s['error']}" for name, s in model.get("systems", {}).items() if "error" in s]
    return found


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--models", nargs="+", default=["default", "sd15"], help="'default', 'sd15' (SD-1.5 class, random weights) or model directories")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: the same harness on the CPU backends (a dry run)")
    p.add_argument("--prompt", default="a red circle at the top left")
    p.add_argument("--steps", type=int, default=50, help="steps of the timed runs (default: %(default)s)")
    p.add_argument("--parity-steps", type=int, default=5, help="steps of the parity runs (default: %(default)s)")
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=5, help="timed end-to-end runs per system (default: %(default)s)")
    p.add_argument("--stage-runs", type=int, default=2, help="synchronised runs per system for per-stage times (default: %(default)s)")
    p.add_argument("--finetune-steps", type=int, default=None,
                   help="timed fine-tuning steps of the SD-1.5-class model (bf16, gradient checkpointing, batch 4; 0: skip; default: 20 on cuda, 0 on cpu)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder for model and engine directories (default: the system's temp)")
    args = p.parse_args(argv)
    for name in ("steps", "parity_steps", "runs", "stage_runs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.finetune_steps is None:
        args.finetune_steps = 20 if args.device == "cuda" else 0
    if args.finetune_steps < 0:
        p.error(f"--finetune-steps must be >= 0, got {args.finetune_steps}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    for label in args.models:
        if label not in ("default", "sd15") and not Path(label).is_dir():
            p.error(f"--models: {label!r} is neither 'default', 'sd15' nor a model directory")
    setup_logging("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    result = run(args)
    print(markdown(result))
    problems = failures(result)
    for problem in problems:
        logger.error("FAILED %s", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""End-to-end latency, side by side and interleaved: the reference pipeline, a plain diffusers DDIM loop (same
UNet / text encoder / VAE, no adapter: what Stable Diffusion costs), and runtime.Generator on every backend this
machine has. Writes a JSON file and prints a markdown table. Benchmarks are scripts, never timed tests.

    python -m benchmarks.latency                       # embedded default model, CPU (ONNX Runtime, OpenVINO, torch)
    python -m benchmarks.latency --sd15 --device cuda  # the SD-1.5-class model at 512 x 512 on a GPU
    python -m benchmarks.latency --video               # one video edit, embedded default video model (benchmarks/video_latency.py)
    python -m benchmarks.latency --cache-interval 3    # step caching (issue 34): engines built with --step-cache
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.harness import System, cell, interleave, machine, peak_rss_mib, not_run_rows, percentiles, render_table, stages_ms, time_runs, warm_up, write_result
from benchmarks.models import unet_flops
from benchmarks.timing import Timer, diffusers_ddim, instrument_generator, instrument_pipeline
from runtime.backends import cuda_driver
from runtime.cli import PLAIN, Parser, setup_logging
from runtime.errors import ContextDiffError

logger = logging.getLogger("benchmarks.latency")


def _openvino_systems(engines: Path, prompts: list[str], call: dict[str, Any]) -> tuple[list[System], dict[str, str]]:
    """runtime.Generator on OpenVINO (CPU) over the same fp32 artifacts: f32, and bf16 where the CPU has it.
    Returns the systems and, for those that cannot run here, why."""
    from runtime.backends.openvino import openvino_unavailable_reason
    from runtime.generator import Generator
    from runtime.options import ONNX_OPENVINO_PRECISIONS

    systems, skipped = [], {}
    for precision in ONNX_OPENVINO_PRECISIONS:
        name = f"runtime openvino {precision.value}"
        if why := openvino_unavailable_reason(precision):
            skipped[name] = why
            continue
        gen = Generator.from_dir(engines, backend="openvino", precision=precision)
        systems.append(System(name, None, Timer()))
        instrument_generator(gen, systems[-1].timer)
        systems[-1].run = (lambda g: lambda: g.run_timed(prompts, **call).images)(gen)
    return systems, skipped


def _systems(args: argparse.Namespace, workdir: Path) -> tuple[list[System], Any, dict[str, str]]:
    from contextdiff_ref.models.defaults import default_model_dir
    from contextdiff_ref.models.model_dir import quiet_loading
    from contextdiff_ref.pipelines.text_to_image import ContextDiffPipeline
    from contextdiff_ref.pipelines.torch_runner import torch_generator
    from export.build import BuildOptions, build_engine_dir
    from runtime.generator import Generator
    from runtime.options import BuildBackend, Precision

    quiet_loading()
    model_dir = Path(args.model) if args.model else default_model_dir()
    if args.sd15:
        from contextdiff_ref.models.sd15 import write_sd15_model_dir

        model_dir = write_sd15_model_dir(workdir / "sd15-contextdiff")
    gpu = args.device == "cuda"
    dtype = torch.float16 if gpu else torch.float32
    pipe = ContextDiffPipeline.from_pretrained(model_dir, device=args.device, torch_dtype=dtype)
    prompts = [args.prompt] * args.batch
    call = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, seed=0, progress=False, cache_interval=args.cache_interval)
    systems = [System("reference (eager PyTorch)", None, Timer(gpu)), System("diffusers DDIM baseline (no adapter)", None, Timer(gpu))]
    instrument_pipeline(pipe, systems[0].timer)
    systems[0].run = lambda: pipe.run_timed(prompts, **call).images
    systems[1].run = lambda: diffusers_ddim(pipe, prompts, args.steps, args.guidance, systems[1].timer)
    precisions = [Precision.FP16] if gpu else [Precision.FP32, Precision.FP16]
    skipped: dict[str, str] = {}
    runner = gpu_runtime_backend() if gpu else ("onnxruntime-cpu", None)
    if runner[1]:  # never the CPU under --device cuda: the runtime row is left out, and says why
        skipped["runtime fp16 (ONNX Runtime CUDA or TensorRT)"] = runner[1]
        precisions = []
    for precision in precisions:
        engines = workdir / f"engines-{precision.value}"
        backend = BuildBackend.TENSORRT if runner[0] == "tensorrt" else BuildBackend.ONNXRUNTIME
        options = BuildOptions(backend=backend, precision=precision, max_images=args.batch, step_cache=args.cache_interval > 1)
        try:
            build_engine_dir(model_dir, engines, options)
        except ContextDiffError as exc:
            if not options.step_cache:
                raise
            skipped[f"runtime {runner[0]} {precision.value}"] = f"its step-cache build failed: {exc}"  # the row says why, the others run
            continue
        gen = Generator.from_dir(engines, backend=runner[0])
        systems.append(System(f"runtime {gen.backend} {precision.value}", None, Timer(gpu)))
        instrument_generator(gen, systems[-1].timer)
        systems[-1].run = (lambda g: lambda: g.run_timed(prompts, **call).images)(gen)
        if not gpu and precision is Precision.FP32:
            more, why = _openvino_systems(engines, prompts, call)
            systems, skipped = systems + more, {**skipped, **why}
    torch_gen = torch_generator(model_dir, device=args.device, fp16=gpu, max_images=args.batch)  # no engine directory needed
    systems.append(System(f"runtime torch {'fp16 + CUDA graphs' if gpu else 'fp32'}", None, Timer(gpu)))
    instrument_generator(torch_gen, systems[-1].timer)
    systems[-1].run = lambda: torch_gen.run_timed(prompts, **call).images
    return systems, pipe, skipped


def gpu_runtime_backend() -> tuple[str, str | None]:
    """The runtime backend that runs on a GPU here ("tensorrt" or "onnxruntime-cuda"), or why none does."""
    import onnxruntime

    from export.tensorrt_build import tensorrt_status

    if importlib.util.find_spec("cupy") is None:
        return "", "CuPy is not installed (the runtime's GPU arrays: pip install contextdiff-deploy[cuda13] or [cuda12])"
    if tensorrt_status()[0]:
        return "tensorrt", None
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return "onnxruntime-cuda", None
    return "", "neither TensorRT nor onnxruntime-gpu is installed (ONNX Runtime's CPU build would run on the CPU)"


def no_cuda_reason() -> str | None:
    """Why ``--device cuda`` cannot run here (None: torch sees a GPU)."""
    if torch.cuda.is_available():
        return None
    return f"torch sees no GPU (torch {torch.__version__}, built for CUDA {torch.version.cuda}); nothing would run on one"


def _summary(system: System, steps: int, batch: int, reference: float, baseline: float) -> dict[str, Any]:
    e2e = np.array(system.e2e)
    per_call = {k: float(np.mean(v)) for k, v in system.timer.samples.items()}
    step = float(np.mean(system.timer.samples.get("step", [np.nan])))
    engines = per_call.get("unet", 0.0) * system.timer.calls_per_step("unet") + per_call.get("adapter", 0.0) * system.timer.calls_per_step("adapter")
    return {
        "runs": len(e2e), "mean_s": float(e2e.mean()), **percentiles(e2e), "images_per_s": batch / float(e2e.mean()),
        "stages_ms": stages_ms(system.timer.samples),
        "loop_overhead_fraction": (step - engines) / step if step == step else None,
        "adapter_over_unet": per_call["adapter"] / per_call["unet"] if "adapter" in per_call and "unet" in per_call else None,
        "vs_reference": float(e2e.mean()) / reference, "vs_diffusers": float(e2e.mean()) / baseline,
    }  # fmt: skip


def _machine(device: str) -> dict[str, Any]:
    info = machine(torch=torch.__version__, cpu_count=torch.get_num_threads())
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["fp16_matmul_tflops"] = matmul_peak_tflops()
    return info


def matmul_peak_tflops(n: int = 8192, repeats: int = 20) -> float:
    """Measured fp16 dense matmul throughput (TFLOP/s): the physical yardstick for the UNet's achieved rate."""
    a = torch.randn(n, n, device="cuda", dtype=torch.float16)
    b = torch.randn(n, n, device="cuda", dtype=torch.float16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def markdown(result: dict[str, Any]) -> str:
    header = ["system", "mean s", "p50 s", "p90 s", "p99 s", "img/s", "× reference", "× diffusers", "UNet ms/call", "adapter ms/call", "loop overhead",
              "adapter / UNet"]  # fmt: skip
    rows = [[name, f"{s['mean_s']:.3f}", f"{s['p50_s']:.3f}", f"{s['p90_s']:.3f}", f"{s['p99_s']:.3f}", f"{s['images_per_s']:.2f}", f"{s['vs_reference']:.2f}",
             f"{s['vs_diffusers']:.2f}", cell(s["stages_ms"].get("unet"), ".2f"), cell(s["stages_ms"].get("adapter"), ".2f"),
             cell(s["loop_overhead_fraction"], ".1%"), cell(s["adapter_over_unet"], ".1%")] for name, s in result["systems"].items()]  # fmt: skip
    return render_table(header, rows + not_run_rows(result.get("skipped", {})))


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m benchmarks.latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model directory (default: the embedded default model)")
    p.add_argument("--sd15", action="store_true", help="the SD-1.5-class model with random weights (contextdiff_ref.models.sd15; for GPUs)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--prompt", default="a red circle at the top left")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--cache-interval", type=int, default=1,
                   help="step caching: every k-th step runs the whole UNet (engines built with --step-cache), in the reference and every runtime "
                        "row; the diffusers baseline stays uncached. Stage times then count a shallow step as a UNet call in the runtime rows, "
                        "the reference's count only the full ones (default: %(default)s, no caching)")  # fmt: skip
    p.add_argument("--video", action="store_true",
                   help="time one video edit (inversion + sampling) instead: the reference VideoEditPipeline against runtime.VideoEditor, on "
                        "the embedded default video model (--model: another video model directory with source.gif/source.txt); CPU")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="JSON to write (default: benchmarks/results/latency.json, latency-video.json with --video)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.runs < 1 or args.batch < 1 or args.warmup < 0 or args.cache_interval < 1:
        p.error(f"--steps={args.steps}, --runs={args.runs}, --batch={args.batch}, --cache-interval={args.cache_interval}, --warmup={args.warmup}: "
                "--steps, --runs, --batch and --cache-interval must be >= 1, --warmup >= 0")
    if args.video and args.cache_interval != 1:
        p.error("--video times one video edit without step caching: it takes no --cache-interval")
    if args.video and (args.sd15 or args.device != "cpu" or args.batch != 1):
        p.error("--video times one edit on the CPU: it takes no --sd15, --device cuda or --batch")
    if args.device == "cuda" and (why := no_cuda_reason()):
        p.exit(2, f"error: --device cuda: {why}; use --device cpu for the CPU backends\n")
    args.out = args.out or Path("benchmarks/results/latency-video.json" if args.video else "benchmarks/results/latency.json")
    setup_logging(PLAIN)
    if args.video:
        from benchmarks import video_latency

        with tempfile.TemporaryDirectory(prefix="contextdiff-bench-") as tmp:
            try:
                result = video_latency.run(args, Path(tmp), _machine("cpu"))
            except ContextDiffError as exc:
                p.exit(2, f"error: {exc}\n")
        return write_result(result, args.out, video_latency.markdown(result))
    with tempfile.TemporaryDirectory(prefix="contextdiff-bench-") as tmp:
        try:
            systems, pipe, skipped = _systems(args, Path(tmp))
        except ContextDiffError as exc:
            p.exit(2, f"error: {exc}\n")
        warm_up(systems, args.warmup)  # then interleaved timed runs (A B C A B C ...) so drift hits all alike
        gpu = args.device == "cuda"
        device_bytes = 0

        def device_memory(_: System) -> None:
            nonlocal device_bytes
            device_bytes = max(device_bytes, cuda_driver.memory_in_use(torch.cuda.current_device()))

        for system in systems:  # on a GPU, end-to-end runs go uninstrumented: a sync around every stage would distort them
            system.timer.active = not gpu
        time_runs(systems, args.runs, after_run=device_memory if gpu else None)  # runs return host images: the device work is done
        if gpu:  # per-stage times from separate, synchronised runs
            for system in systems:
                system.timer.active = True
            interleave(systems, args.runs, lambda system: system.run(), label=None)
            logger.info("per-stage runs done")
        reference, baseline = float(np.mean(systems[0].e2e)), float(np.mean(systems[1].e2e))
        h = pipe.limits.default_height // pipe.limits.vae_scale_factor
        flops = unet_flops(pipe.components, 2 * args.batch if args.guidance != 1 else args.batch, h, h)
        result = {
            "machine": _machine(args.device),
            "config": {"model": "sd15-contextdiff" if args.sd15 else (args.model or "embedded default"), "device": args.device, "steps": args.steps,
                       "guidance": args.guidance, "batch": args.batch, "height": pipe.limits.default_height, "warmup": args.warmup, "runs": args.runs,
                       "cache_interval": args.cache_interval},
            "unet_gflops_per_call": flops / 1e9,
            "peak_host_rss_mib": peak_rss_mib(),
            "device_memory_in_use_mib": device_bytes / 2**20 if gpu else None,  # the driver's count after each run, largest: every allocator's pools
            "systems": {s.name: _summary(s, args.steps, args.batch, reference, baseline) for s in systems},
            "skipped": skipped,  # systems that cannot run on this machine, and why
        }  # fmt: skip
        for s in result["systems"].values():
            unet_ms = s["stages_ms"].get("unet")
            s["unet_tflops_achieved"] = flops / (unet_ms / 1e3) / 1e12 if unet_ms and args.cache_interval == 1 else None  # shallow calls do less
    return write_result(result, args.out, markdown(result))


if __name__ == "__main__":
    sys.exit(main())

"""One command for a GPU machine: what it has, then the GPU backends that can run there — Torch CUDA (fp16, CUDA
graphs), CuPy + ONNX Runtime CUDA, TensorRT (full and lean runtime) — on the SD-1.5-class model and the embedded
default model: latency (p50/p90/p99 end to end, per stage, achieved TFLOP/s, device memory) next to diffusers' eager
loop, parity against the CPU fp32 reference (PSNR of the images), and fine-tuning speed. Writes gpu_check.json and
gpu_check.md (benchmarks/gpu_report.py), rewritten after every system.

    python -m benchmarks.gpu_check --out "$OUT" --budget-s 540                # a lent machine: one 10-minute command
    python -m benchmarks.gpu_check --out results/gpu --models sd15 --runs 10
    python -m benchmarks.gpu_check --out /tmp/check --device cpu --models default   # the same harness on the CPU backends

It plans first (benchmarks/gpu_plan.py): the goal's verdict, then parity, the default model, fine-tuning, the rest;
what would not fit ``--budget-s`` is skipped and said so. A backend that cannot run is listed with the reason; one that
fails is recorded with its error and the check goes on (exit status 1). With ``--device cuda`` and no GPU torch can
use it writes the environment report and exits 1 at once. End-to-end runs are uninstrumented (interleaved for the
goal's pair); per-stage times come from separate, synchronised runs.
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks import gpu_plan
from benchmarks.environment import environment
from benchmarks.gpu_report import failures, goal, markdown, write as _write
from benchmarks.harness import System, percentiles, stages_ms, time_runs
from runtime.backends import cuda_driver
from runtime.cli import Parser, setup_logging
from runtime.metrics import psnr

logger = logging.getLogger("benchmarks.gpu_check")


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
            Candidate("torch cpu fp32", None, lambda m, w: torch_generator(m, device="cpu")),
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
        "torch cuda fp16 + CUDA graphs": lambda m, w: torch_generator(m, device="cuda", fp16=True),  # no export: the manifest comes from m
        "onnxruntime cuda fp16": generator("onnxruntime", "fp16", "onnxruntime-cuda"),
        "tensorrt fp16": generator("tensorrt", "fp16", "tensorrt"),
        "tensorrt lean fp16": generator("tensorrt", "fp16", "tensorrt", lean=True),
    }
    return [Candidate(name, reasons[name], makers[name]) for name in makers]


def _memory(device: str) -> int:
    return cuda_driver.memory_in_use(0) if device == "cuda" else 0


def _error(exc: BaseException) -> dict[str, Any]:
    return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=-6).splitlines()[-12:]}


@dataclass
class Loaded:
    """A system ready to time, and how to draw its parity images."""

    system: System
    parity: Callable[[], np.ndarray]
    close: Callable[[], None] = lambda: None


@dataclass
class ModelState:
    """One model across the plan's items: its directory, its row in the result, loaded systems, reference images."""

    label: str
    model_dir: Path
    row: dict[str, Any]
    loaded: list[Loaded] = field(default_factory=list)
    expected: np.ndarray | None = None
    flops: dict[str, int] | None = None
    baseline_p50: float | None = None


class Check:
    """Runs the plan's items one at a time, writing the JSON and markdown after every system."""

    def __init__(self, args: argparse.Namespace, result: dict[str, Any], work: Path) -> None:
        self.args, self.result, self.work = args, result, work
        self.gpu = args.device == "cuda"
        self.states: dict[str, ModelState] = {}
        self.prompts = [args.prompt]
        self.call = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, seed=0, progress=False)
        self.parity_call = dict(num_inference_steps=args.parity_steps, guidance_scale=args.guidance, seed=0, progress=False)
        self.candidates = candidates(result["environment"], args.device)

    def write(self) -> None:
        _write(self.result, self.args.out)

    def state(self, label: str) -> ModelState:
        if label not in self.states:
            model_dir = _model_dir(label, self.work)
            row = self.result["models"].setdefault(label, {"model_dir": str(model_dir), "systems": {}, "skipped": {}})
            self.states[label] = ModelState(label, model_dir, row)
        return self.states[label]

    def release(self, keep: ModelState | None = None) -> None:
        """Free every loaded system (but ``keep``'s): the next item gets the device to itself."""
        for state in self.states.values():
            if state is not keep:
                for loaded in state.loaded:
                    loaded.close()
                state.loaded = []
        gc.collect()
        if self.gpu:
            import torch

            torch.cuda.empty_cache()

    # --- the systems -------------------------------------------------------------------------------------------
    def _pipeline(self, state: ModelState, kind: str) -> Loaded:
        import torch

        from benchmarks.models import adapter_flops, unet_flops
        from benchmarks.timing import Timer, diffusers_ddim, instrument_pipeline
        from contextdiff_ref.pipelines.text_to_image import ContextDiffPipeline

        pipe = ContextDiffPipeline.from_pretrained(state.model_dir, device=self.args.device, torch_dtype=torch.float16 if self.gpu else torch.float32)
        if state.flops is None:
            limits = pipe.limits
            h, w = limits.default_height // limits.vae_scale_factor, limits.default_width // limits.vae_scale_factor
            batch = 2 if self.args.guidance != 1 else 1
            state.flops = {"unet": unet_flops(pipe.components, batch, h, w), "adapter": adapter_flops(pipe.components, 2, h, w)}
            state.row.update(height=limits.default_height, width=limits.default_width, unet_gflops_per_call=state.flops["unet"] / 1e9,
                             adapter_gflops_per_call=state.flops["adapter"] / 1e9)  # fmt: skip
        timer, precision, a = Timer(self.gpu), "fp16" if self.gpu else "fp32", self.args
        if kind == "reference":
            instrument_pipeline(pipe, timer)
            system = System(f"reference eager {precision} (PyTorch)", lambda: pipe.run_timed(self.prompts, **self.call).images, timer, kind=kind)
            return Loaded(system, lambda: pipe(self.prompts, **self.parity_call).images)
        # its PSNR says how far the adapter moves the image; for a model with r ≡ 0 it checks the reference itself
        system = System(f"diffusers eager {precision} (no adapter)", lambda: diffusers_ddim(pipe, self.prompts, a.steps, a.guidance, timer), timer, kind=kind)
        return Loaded(system, lambda: diffusers_ddim(pipe, self.prompts, a.parity_steps, a.guidance, Timer(self.gpu)))

    def _runtime(self, state: ModelState, candidate: Candidate) -> Loaded:
        from benchmarks.timing import Timer, instrument_generator

        gen = candidate.make(state.model_dir, self.work)
        timer = Timer(self.gpu)
        instrument_generator(gen, timer)
        system = System(candidate.name, lambda: gen.run_timed(self.prompts, **self.call).images, timer, kind="runtime")
        return Loaded(system, lambda: gen(self.prompts, **self.parity_call).images, getattr(gen, "close", lambda: None))

    def _load(self, state: ModelState, name: str, make: Callable[[], Loaded]) -> Loaded | None:
        before = _memory(self.args.device)
        try:
            loaded = make()
            if state.expected is not None:
                loaded.system.result.update(_parity(loaded.parity(), state.expected))
            _warm_up(loaded.system, self.args.warmup, before, self.args.device)
            return loaded
        except Exception as exc:  # a failure is recorded, and the check goes on
            state.row["systems"][name] = _error(exc)
            logger.error("%s / %s: %s", state.label, name, state.row["systems"][name]["error"])
            self.write()
            return None

    def _measure(self, state: ModelState, group: list[Loaded]) -> None:
        """End to end, uninstrumented and interleaved (A B C A B C ...), then per stage in separate synchronised runs."""
        systems = [g.system for g in group]
        for system in systems:
            system.timer.active = False
        time_runs(systems, self.args.runs, label=f"{state.label}: ")  # runs return host images: the device work is done
        for system in systems:
            system.timer.active = True
            system.timer.reset()
            for _ in range(self.args.stage_runs):
                system.run()
        for system in systems:
            if system.kind == "baseline":
                state.baseline_p50 = float(np.median(system.e2e))
        for system in systems:
            state.row["systems"][system.name] = {**system.result, **_latency(system, state.flops or {"unet": 0, "adapter": 0}, state.baseline_p50)}
            self.write()

    def _torch_candidate(self) -> Candidate:
        return self.candidates[0]  # candidates() lists the Torch backend first: the goal's system

    # --- the items ---------------------------------------------------------------------------------------------
    def pair(self, label: str) -> None:
        """diffusers eager and the Torch backend, timed together; they stay loaded for the parity item."""
        self.release()
        state = self.state(label)
        torch_c = self._torch_candidate()
        group = [self._load(state, "diffusers", lambda: self._pipeline(state, "baseline"))]
        if torch_c.why_not:
            state.row["skipped"][torch_c.name] = torch_c.why_not
        else:
            group.append(self._load(state, torch_c.name, lambda: self._runtime(state, torch_c)))
        state.loaded = [g for g in group if g is not None]
        if state.loaded:
            self._measure(state, state.loaded)
        self.result["goal"] = goal(self.result, self.args)
        self.write()

    def parity(self, label: str) -> None:
        """The CPU fp32 reference's images, and the PSNR of every system still loaded against them."""
        from contextdiff_ref.pipelines.text_to_image import ContextDiffPipeline

        self.release(keep=self.states.get(label))
        state = self.state(label)
        start = time.perf_counter()
        reference = ContextDiffPipeline.from_pretrained(state.model_dir)
        state.expected = reference(self.prompts, **self.parity_call).images
        del reference
        gc.collect()
        logger.info("%s: CPU reference, %d steps: %.1f s", label, self.args.parity_steps, time.perf_counter() - start)
        for loaded in state.loaded:
            name = loaded.system.name
            try:
                state.row["systems"][name].update(_parity(loaded.parity(), state.expected))
            except Exception as exc:
                state.row["systems"][name].update(parity_error=_error(exc)["error"])
            self.write()
        self.release()

    def others(self, label: str) -> None:
        """The reference in eager mode and every runtime backend but the Torch one: one at a time, written after each."""
        self.release()
        state = self.state(label)
        makers = [("reference", lambda: self._pipeline(state, "reference"))]
        for c in self.candidates[1:]:  # the first (Torch) ran in the pair
            if c.why_not:
                state.row["skipped"][c.name] = c.why_not
            else:
                makers.append((c.name, (lambda c: lambda: self._runtime(state, c))(c)))
        for name, make in makers:
            loaded = self._load(state, name, make)
            if loaded is not None:
                self._measure(state, [loaded])
                loaded.close()
            gc.collect()
        self.write()

    def finetune(self) -> None:
        """Fine-tuning the SD-1.5-class model: images/s and memory (benchmarks/finetune_speed.py)."""
        from benchmarks.finetune_speed import measure

        self.release()
        sd15 = self.work / "sd15-contextdiff"
        self.result["finetune"] = measure(sd15 if sd15.is_dir() else _model_dir("sd15", self.work), self.work, steps=self.args.finetune_steps)


def _parity(images: np.ndarray, expected: np.ndarray) -> dict[str, Any]:
    return {"image_psnr_vs_cpu_reference": psnr(images, expected), "finite": bool(np.all(np.isfinite(images)))}


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


def _model_dir(label: str, work: Path) -> Path:
    from contextdiff_ref.models.defaults import default_model_dir

    if label == "default":
        return default_model_dir()
    if label == "sd15":
        from contextdiff_ref.models.sd15 import write_sd15_model_dir

        return write_sd15_model_dir(work / "sd15-contextdiff")
    return Path(label)


def no_gpu_reason(env: dict[str, Any]) -> str | None:
    """Why ``--device cuda`` cannot run here (None: it can)."""
    if not env["gpus"]:
        return f"no GPU: {env['gpu_error']}"
    if not env.get("torch_cuda", {}).get("available"):
        return f"torch cannot use the GPU (built for CUDA {env.get('torch_cuda', {}).get('built_for')}; a CPU build?)"
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Plan, then run the plan; ``args.out``/gpu_check.json and .md are rewritten after every system (a check cut
    short still leaves what it measured). With ``--device cuda`` and no usable GPU: the environment report alone."""
    from contextdiff_ref.models.model_dir import quiet_loading

    started = time.perf_counter()
    quiet_loading()
    args.out.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if k not in ("out", "work")}
    result: dict[str, Any] = {"environment": environment(), "config": config, "models": {}}
    if args.device == "cuda" and (why := no_gpu_reason(result["environment"])):
        result["no_gpu"] = why
        _write(result, args.out)
        return result
    runnable = [c.name for c in candidates(result["environment"], args.device)[1:] if not c.why_not]
    steps = gpu_plan.plan(gpu_plan.items(args.models, args.device, config, os.cpu_count() or 1, runnable), args.budget_s)
    result["plan"] = {"budget_s": args.budget_s, "items": [i.to_json() for i in steps]}
    print(gpu_plan.describe(steps, args.budget_s), flush=True)
    if args.device == "cuda":
        from benchmarks.latency import matmul_peak_tflops

        result["matmul_fp16_tflops"] = matmul_peak_tflops()
    _write(result, args.out)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-", dir=args.work))
    check = Check(args, result, work)
    try:
        for n, item in enumerate(steps):
            left = args.budget_s - gpu_plan.RESERVE_S - (time.perf_counter() - started)
            if item.status == "planned" and n > 0 and item.estimate_s > left:
                item.status, item.why = "skipped", f"would not fit at run time: about {item.estimate_s:.0f} s, {max(left, 0):.0f} s left"
            if item.status == "skipped":
                logger.info("skipped: %s (%s)", item.what, item.why)
            else:
                start = time.perf_counter()
                try:
                    check.finetune() if item.kind == "finetune" else getattr(check, item.kind)(item.model)
                    item.status = "ran"
                except Exception as exc:  # the item itself (a model directory, the CPU reference, the fine-tuning) failed
                    item.status, error = "failed", _error(exc)
                    target = result.setdefault("finetune", {}) if item.kind == "finetune" else result["models"].setdefault(item.model, {})
                    target.update(error) if item.kind in ("finetune", "pair") else target.setdefault("errors", {}).update({item.kind: error["error"]})
                    logger.error("%s: %s", item.what, error["error"])
                item.seconds = time.perf_counter() - start
            result["plan"]["items"][n] = item.to_json()
            _write(result, args.out)
        check.release()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


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
    p.add_argument("--budget-s", type=float, default=540.0,
                   help="seconds the check may take: it plans what fits, in order of value, and skips the rest (default: %(default)s, one 10-minute command)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder for model and engine directories (default: the system's temp)")
    args = p.parse_args(argv)
    for name in ("steps", "parity_steps", "runs", "stage_runs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.finetune_steps is None:
        args.finetune_steps = 20 if args.device == "cuda" else 0
    if args.finetune_steps < 0:
        p.error(f"--finetune-steps must be >= 0, got {args.finetune_steps}")
    if args.finetune_steps and args.device == "cpu":
        p.error("--finetune-steps fine-tunes the SD-1.5-class model: a GPU's job (on the CPU it takes tens of minutes and over 20 GB)")
    if args.budget_s <= 0:
        p.error(f"--budget-s must be > 0, got {args.budget_s}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    for label in args.models:
        if label not in ("default", "sd15") and not Path(label).is_dir():
            p.error(f"--models: {label!r} is neither 'default', 'sd15' nor a model directory")
    setup_logging("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    result = run(args)
    if result.get("no_gpu"):
        logger.error("%s: nothing run; the environment report is in %s", result["no_gpu"], args.out / "gpu_check.md")
        return 1
    print(markdown(result))
    problems = failures(result)
    for problem in problems:
        logger.error("FAILED %s", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

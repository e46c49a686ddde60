"""The GPU check's plan: what fits a time budget, in order of value, each item with an estimated time.

Order (issue 39): the goal's verdict first — the SD-1.5-class model at its 512 x 512, ``--steps`` 50, Torch CUDA fp16
with CUDA graphs timed against diffusers' eager loop in fp16 —, then parity of those two against the CPU fp32 reference,
then each other model (the embedded default: all its systems), then fine-tuning speed, then the SD-1.5-class model's
remaining systems (the reference in eager fp16, ONNX Runtime CUDA, TensorRT). For a model other than ``sd15`` the same
three items (pair, parity, others) come in the order the models are given.

The plan is a prefix: items are taken in order while their estimates fit ``budget - RESERVE_S``; the first that does not
fit and every item after it are skipped (and said so). The first item always runs: without it the lease is wasted. At
run time each item is checked again against the time left (an estimate can be wrong); one that no longer fits is
skipped then.

The estimates are assumptions, not measurements, except the CPU figures: nothing GPU has run in this project yet.
GPU figures are for one H100 (SXM, fp16) and come from public SD-1.5 figures (diffusers eager fp16 with SDPA, 512 x 512,
50 steps: about 1.5-2 s on an A100/H100 class GPU; CUDA graphs remove most launch overhead); they are set on the high
side so that a plan that fits, fits. CPU figures come from ``benchmarks/results/sd15-cpu.json`` (the reference at
512 x 512 on 2 cores: 14.1 s a guided step, 21.1 s the VAE decode), scaled by 2 / cores with 50 % slack for imperfect
scaling. Every estimate says where it comes from in ``basis``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

RESERVE_S = 15.0  # writing the reports, freeing memory, exiting: kept out of the plan
# GPU (assumed, H100, fp16, SD-1.5 class at 512 x 512, guidance, one image): seconds per 50-step call
GPU_CALL_S = {"diffusers": 2.0, "torch": 1.2, "reference": 2.5, "runtime": 1.5}
GPU_START_S = 20.0  # torch import, CUDA context, the fp16 matmul peak measurement
SD15_WRITE_S = 60.0  # contextdiff_ref.models.sd15: seeded random init of ~1.07 B parameters and ~4 GB of safetensors
GPU_LOAD_S = 15.0  # one SD-1.5-class system onto the GPU (safetensors from the page cache), CUDA graph capture included
ENGINE_BUILD_S = {"onnxruntime cuda fp16": 180.0, "tensorrt fp16": 420.0, "tensorrt lean fp16": 420.0}  # fp16 ONNX export (+ plans)
FINETUNE_SETUP_S, FINETUNE_STEP_S = 40.0, 1.0  # batch 4 at 512, bf16, gradient checkpointing, whole UNet + adapter (assumed)
# CPU (measured, benchmarks/results/sd15-cpu.json, 2 cores): the reference at 512 x 512
CPU_STEP_S_2_CORES, CPU_DECODE_S_2_CORES, CPU_LOAD_S = 14.1, 21.1, 15.0
SMALL_MODEL_S = {"pair": 15.0, "parity": 10.0, "others": 60.0}  # the embedded default or a tiny model: ONNX export dominates


@dataclass
class Item:
    kind: str  # "pair" (for sd15: the goal), "parity", "others", "finetune"
    model: str | None  # the --models label; None for finetune
    what: str
    estimate_s: float
    basis: str
    status: str = "planned"  # planned -> ran / failed / skipped
    seconds: float | None = None
    why: str | None = None  # why skipped
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "extra"}


def _cpu_scale(cpu_count: int) -> float:
    return 2 / max(cpu_count, 1) * 1.5


def _estimates(model: str, device: str, cfg: dict[str, Any], cpu_count: int, runnable: list[str]) -> dict[str, tuple[float, str]]:
    """(seconds, basis) of the pair, parity and others items of one model."""
    calls = cfg["warmup"] + cfg["runs"] + cfg["stage_runs"]
    step_share = cfg["steps"] / 50
    if model != "sd15":
        return {k: (v, "a small model (the embedded default or a model directory): a rough allowance") for k, v in SMALL_MODEL_S.items()}
    cpu_step = CPU_STEP_S_2_CORES * _cpu_scale(cpu_count)
    cpu_ref = CPU_LOAD_S + cfg["parity_steps"] * cpu_step + CPU_DECODE_S_2_CORES * _cpu_scale(cpu_count)
    if device == "cpu":  # the pair runs the reference's cost on the CPU, per call
        call = cfg["steps"] * cpu_step + CPU_DECODE_S_2_CORES * _cpu_scale(cpu_count)
        return {"pair": (SD15_WRITE_S + 2 * CPU_LOAD_S + 2 * calls * call, "measured CPU step and decode (sd15-cpu.json), scaled to the cores"),
                "parity": (cpu_ref * 3, "measured CPU step and decode, three parity runs"),
                "others": (CPU_LOAD_S + calls * call + 600.0 * len(runnable), "measured CPU step and decode, ONNX export allowance")}  # fmt: skip
    pair = GPU_START_S + SD15_WRITE_S + 2 * GPU_LOAD_S + calls * step_share * (GPU_CALL_S["diffusers"] + GPU_CALL_S["torch"])
    parity = cpu_ref + 2 * cfg["parity_steps"] / 50 * GPU_CALL_S["diffusers"]
    others = GPU_LOAD_S + calls * step_share * GPU_CALL_S["reference"]
    others += sum(ENGINE_BUILD_S.get(name, 300.0) + GPU_LOAD_S + calls * step_share * GPU_CALL_S["runtime"] for name in runnable)
    gpu = "assumed H100 fp16 figures (GPU_CALL_S, GPU_LOAD_S, SD15_WRITE_S)"
    return {"pair": (pair, f"{calls} calls of {cfg['steps']} steps each for diffusers and torch; {gpu}"),
            "parity": (parity, f"CPU fp32 reference, {cfg['parity_steps']} steps (measured CPU figures scaled to {cpu_count} cores)"),
            "others": (others, f"reference eager fp16 and {len(runnable)} runtime backend(s) ({', '.join(runnable) or 'none can run here'}); {gpu}, "
                               "engine build allowances")}  # fmt: skip


def items(models: list[str], device: str, cfg: dict[str, Any], cpu_count: int, runnable: list[str]) -> list[Item]:
    """Every item the check could run, in order of value (the module's doc)."""
    out: list[Item] = []

    def model_items(model: str, kinds: tuple[str, ...]) -> list[Item]:
        est = _estimates(model, device, cfg, cpu_count, runnable)
        what = {"pair": "goal: torch fp16 + CUDA graphs vs diffusers eager fp16" if model == "sd15" and device == "cuda" else "torch backend vs diffusers eager",
                "parity": "parity against the CPU fp32 reference", "others": "the remaining systems"}  # fmt: skip
        return [Item(kind, model, f"{model}: {what[kind]}", round(est[kind][0], 1), est[kind][1]) for kind in kinds]

    if "sd15" in models:
        out += model_items("sd15", ("pair", "parity"))
    for model in models:
        if model != "sd15":
            out += model_items(model, ("pair", "parity", "others"))
    if cfg["finetune_steps"]:
        seconds = FINETUNE_SETUP_S + (cfg["finetune_steps"] + 3) * FINETUNE_STEP_S + (0 if "sd15" in models else SD15_WRITE_S)
        out.append(Item("finetune", None, f"fine-tuning speed, SD-1.5 class ({cfg['finetune_steps']} steps)", seconds,
                        "assumed H100 bf16 step time (FINETUNE_STEP_S) and setup"))  # fmt: skip
    if "sd15" in models:
        out += model_items("sd15", ("others",))
    return out


def plan(all_items: list[Item], budget_s: float) -> list[Item]:
    """Mark the items that fit ``budget_s`` (a prefix; the first always) as planned, the rest as skipped, in place."""
    used, fits = 0.0, True
    for i, item in enumerate(all_items):
        fits = fits and (i == 0 or used + item.estimate_s <= budget_s - RESERVE_S)
        if fits:
            used += item.estimate_s
        else:
            item.status = "skipped"
            item.why = f"would not fit: about {item.estimate_s:.0f} s, with {max(budget_s - RESERVE_S - used, 0):.0f} s of the {budget_s:.0f} s budget left"
    return all_items


def describe(all_items: list[Item], budget_s: float) -> str:
    """The plan as printed before the check starts."""
    lines = [f"Plan for a {budget_s:.0f} s budget ({RESERVE_S:.0f} s kept for writing up):"]
    for item in all_items:
        mark = f"~{item.estimate_s:5.0f} s" if item.status != "skipped" else "skipped"
        lines.append(f"  {mark}  {item.what}" + (f"  ({item.why})" if item.why else ""))
    total = sum(i.estimate_s for i in all_items if i.status != "skipped")
    lines.append(f"  total of what runs: about {total:.0f} s")
    return "\n".join(lines)

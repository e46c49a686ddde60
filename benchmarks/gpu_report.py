"""The GPU check's report (benchmarks/gpu_check.py): issue 39's goal and its verdict, gpu_check.md rendered from the
result, both files written, and the failures the exit status counts."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.environment import markdown as environment_markdown
from benchmarks.harness import cell, not_run_rows, render_table
from runtime.files import atomic_write_json, atomic_write_text

# issue 39 (restating issue 12's for one H100/H200): SD-1.5 shape at 512 x 512, 50 steps, guidance, batch 1, fp16 — Torch CUDA
# with CUDA graphs <= 0.7 x diffusers eager fp16 on the same GPU and <= 0.8 s end to end
GOAL = {"model": "sd15", "steps": 50, "vs_diffusers": 0.7, "seconds": 0.8}


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
    if result.get("no_gpu"):
        lines += [f"**Nothing was run: {result['no_gpu']}.** `--device cuda` needs a GPU that torch can use; `--device cpu` runs the harness on the CPU.", ""]
    if result.get("plan"):
        rows = [[i["what"], f"{i['estimate_s']:.0f}", i["status"], cell(i["seconds"], ".0f"), i["why"] or ""] for i in result["plan"]["items"]]
        lines += [f"Plan for a {result['plan']['budget_s']:.0f} s budget, in order of value (estimates: benchmarks/gpu_plan.py):", "",
                  render_table(["item", "estimate s", "status", "took s", "why skipped"], rows), ""]  # fmt: skip
    if result.get("matmul_fp16_tflops"):
        lines += [f"Measured fp16 matmul peak: {result['matmul_fp16_tflops']:.0f} TFLOP/s", ""]
    for label, model in result["models"].items():
        lines += [f"## {label}", ""]
        if "error" in model:
            lines += [f"failed: {model['error']}", ""]
            continue
        lines += [f"{kind} failed: {error}" for kind, error in model.get("errors", {}).items()]
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
        lines += [f"{model.get('height', '?')} x {model.get('width', '?')}, {result['config']['steps']} steps, guidance {result['config']['guidance']}, batch 1; parity over "
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


def write(result: dict[str, Any], out: Path) -> None:
    atomic_write_json(out / "gpu_check.json", result, default=str)
    atomic_write_text(out / "gpu_check.md", markdown(result) + "\n")


def failures(result: dict[str, Any]) -> list[str]:
    found = [f"{label}: {m['error']}" for label, m in result["models"].items() if "error" in m]
    if "error" in result.get("finetune", {}):
        found.append(f"finetune: {result['finetune']['error']}")
    for label, model in result["models"].items():
        found += [f"{label} / {name}: {s['error']}" for name, s in model.get("systems", {}).items() if "error" in s]
        found += [f"{label} / {kind}: {error}" for kind, error in model.get("errors", {}).items()]
    return found

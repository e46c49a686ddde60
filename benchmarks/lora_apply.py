"""LoRAs on a built engine directory without rebuilding (issue 38), per CPU backend (ONNX Runtime, OpenVINO): the time
to apply a LoRA at load, to switch A -> B and to remove it; the engine build of the LoRA-merged model, for comparison;
peak RSS beside the bytes the LoRA changes and the artifacts' size (a second copy of the untouched weights would show
as a jump of about the artifacts' size); exactness: the image with A applied at load against the image of the engine
built from the peft-merged model, PSNR, on the same backend.

Two seeded rank-``--rank`` LoRAs (A, B) on the UNet's attention projections are made with peft and saved as
safetensors (contextdiff_ref.models.random_lora), A also merged into a copy of the model directory, whose engines are
built with the base engines' settings (read from their manifest). Each backend runs a warm-up base worker (not counted:
the artifacts get read into the page cache, OpenVINO's base model compiled into its cache), then three workers, one
after the other, each in its own (spawned) process so its peak RSS is its own: the base (load, two images), the LoRA (load with A, two
images, ``--switches`` switches alternating B and A each followed by one image, removal and one image) and the merged
engines (load, one image). Apply at load = the LoRA worker's load time - the base worker's. OpenVINO compiles a LoRA
set's model at its first use (cached on disk per set, runtime/backends/openvino.py): the first switch to B compiles,
later ones load from the cache; its static-shape models compile at the first image after a switch, so each switch's
first image time is reported beside the steady image time.

    python -m benchmarks.lora_apply --model models/sd15-contextdiff --engines engines/sd15-contextdiff-256 --steps 3
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import cell, machine, peak_rss_mib, render_table, write_result
from runtime.cli import PLAIN, Parser, setup_logging

logger = logging.getLogger("benchmarks.lora_apply")

BACKENDS = ("onnxruntime-cpu", "openvino")
PROMPT = "a photograph of an astronaut riding a horse"


def _image(gen: Any, steps: int) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    images = gen(PROMPT, num_inference_steps=steps, seed=0, progress=False).images
    return images, time.perf_counter() - start


def _phases(engine_dir: str, backend: str, steps: int, lora: list[tuple[str, float]], switches: list[list[tuple[str, float]]]) -> dict[str, Any]:
    """One worker's run (module docstring): load (with ``lora``), two images, then each of ``switches`` and an image,
    then (when ``lora`` is given) removal and an image. Only the runtime is imported here: the RSS is the runtime's."""
    from runtime.generator import Generator

    start = time.perf_counter()
    precision = "f32" if backend == "openvino" else None  # the exact artifacts, also where the build made int8 IR (no LoRAs on it)
    gen = Generator.from_dir(engine_dir, backend=backend, precision=precision, loras=lora)
    out: dict[str, Any] = {"load_s": time.perf_counter() - start}
    out["image"], out["first_image_s"] = _image(gen, steps)
    out["image_s"] = _image(gen, steps)[1]
    out["peak_rss_after_load_mib"] = peak_rss_mib()
    out["switch_s"], out["first_image_after_switch_s"] = [], []
    for loras in switches:
        start = time.perf_counter()
        gen.set_loras(loras)
        out["switch_s"].append(time.perf_counter() - start)
        out["first_image_after_switch_s"].append(_image(gen, steps)[1])
    if lora:
        out["peak_rss_after_switches_mib"] = peak_rss_mib()
        start = time.perf_counter()
        gen.set_loras([])
        out["remove_s"] = time.perf_counter() - start
        out["image_removed"], out["first_image_after_remove_s"] = _image(gen, steps)
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def _worker(conn: Any, *args: Any) -> None:
    try:
        conn.send(_phases(*args))
    except Exception as exc:  # reported to the driver, which stops with one line
        conn.send({"error": f"{type(exc).__name__}: {exc}"})


def run_worker(*args: Any) -> dict[str, Any]:
    """:func:`_phases` in a spawned process; its error, if any, raised here as a RuntimeError."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_worker, args=(child, *args), daemon=True)
    process.start()
    try:
        reply = parent.recv()
    finally:
        process.join(timeout=60)
        if process.is_alive():
            process.kill()
    if "error" in reply:
        raise RuntimeError(f"{args[1]} worker on {args[0]}: {reply['error']}")
    return reply


def build_options(engine_dir: Path) -> Any:
    """The BuildOptions the engine directory ``engine_dir`` was built with (its manifest): ONNX Runtime artifacts."""
    from export.build import BuildOptions
    from export.onnx_export import Flavour
    from runtime.manifest import load_manifest
    from runtime.options import BuildBackend, Precision
    from runtime.specs import Component

    manifest = load_manifest(engine_dir)
    build, unet = manifest.record.build, manifest.record.components[Component.UNET.value]
    return BuildOptions(backend=BuildBackend.ONNXRUNTIME, precision=Precision(unet.precision), flavour=Flavour(unet.onnx["flavour"]),
                        max_images=build.max_images, height=build.height, width=build.width, dynamic_size=build.dynamic_size,
                        step_cache=Component.UNET_SHALLOW in manifest.components, onnx_cache=None)  # fmt: skip


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """The two LoRAs, the merged model directory and its engines (timed: the rebuild a LoRA would otherwise need), and
    the bytes the LoRA changes beside the artifacts' size."""
    from contextdiff_ref.models.random_lora import make_lora
    from export.build import build_engine_dir
    from runtime.lora import LoraSpec, lora_weights
    from runtime.manifest import load_manifest

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    common = dict(rank=args.rank, alpha=float(args.rank), text_encoder=False, std=args.std)
    a = make_lora(args.model, work / "lora-a.safetensors", seed=args.seed, merged_dir=work / "merged-model", **common)
    b = make_lora(args.model, work / "lora-b.safetensors", seed=args.seed + 1, **common)
    options = build_options(args.engines)
    start = time.perf_counter()
    build_engine_dir(work / "merged-model", work / "merged-engines", options)
    rebuild_s = time.perf_counter() - start
    manifest = load_manifest(args.engines)
    changed = lora_weights(manifest, [LoraSpec(a)])
    artifacts = sum((manifest.root / r.file).stat().st_size for r in manifest.record.files() if not r.file.endswith((".json", ".plan")))
    return {"lora_a": str(a), "lora_b": str(b), "merged_engines": str(work / "merged-engines"), "rebuild_merged_s": rebuild_s,
            "lora_changed_bytes": int(sum(v.nbytes for w in changed.values() for v in w.initializers.values())),
            "lora_changed_initializers": sum(len(w.initializers) for w in changed.values()), "artifact_bytes": int(artifacts)}  # fmt: skip


def bench_backend(backend: str, args: argparse.Namespace, prep: dict[str, Any]) -> dict[str, Any]:
    from runtime.metrics import psnr

    a, b = [(prep["lora_a"], 1.0)], [(prep["lora_b"], 1.0)]
    switches = [b if i % 2 == 0 else a for i in range(args.switches)]
    engines = str(args.engines.resolve())
    run_worker(engines, backend, 1, [], [])  # warm-up, not counted: the artifacts in the page cache, OpenVINO's base entry compiled
    base = run_worker(engines, backend, args.steps, [], [])
    lora = run_worker(engines, backend, args.steps, a, switches)
    merged = run_worker(prep["merged_engines"], backend, args.steps, [], [])
    return {
        "load_base_s": base["load_s"], "load_with_lora_s": lora["load_s"], "apply_at_load_s": lora["load_s"] - base["load_s"],
        "image_s": base["image_s"], "image_with_lora_s": lora["image_s"], "first_image_base_s": base["first_image_s"],
        "first_image_with_lora_s": lora["first_image_s"], "switch_s": lora["switch_s"],
        "first_image_after_switch_s": lora["first_image_after_switch_s"], "remove_s": lora["remove_s"],
        "first_image_after_remove_s": lora["first_image_after_remove_s"],
        "peak_rss_base_mib": base["peak_rss_mib"], "peak_rss_lora_after_load_mib": lora["peak_rss_after_load_mib"],
        "peak_rss_lora_after_switches_mib": lora["peak_rss_after_switches_mib"], "peak_rss_lora_mib": lora["peak_rss_mib"],
        "psnr_lora_at_load_vs_merged_engine_db": psnr(lora["image"], merged["image"]),
        "max_abs_diff_lora_vs_merged": float(np.abs(lora["image"] - merged["image"]).max()),
        "psnr_lora_vs_base_db": psnr(lora["image"], base["image"]),
        "removed_equals_base_bitwise": bool(np.array_equal(lora["image_removed"], base["image"])),
    }  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    header = ["backend", "load s (base)", "apply at load s", "switch s (first / median)", "remove s", "image s", "rebuild merged s",
              "peak RSS GiB base / LoRA", "LoRA changes MiB", "PSNR vs merged dB", "removed = base"]  # fmt: skip
    prep, rows = result["prepared"], []
    for backend, r in result["backends"].items():
        rows.append([backend, f"{r['load_base_s']:.2f}", f"{r['apply_at_load_s']:.2f}",
                     f"{r['switch_s'][0]:.2f} / {np.median(r['switch_s']):.2f}" if r["switch_s"] else "–", f"{r['remove_s']:.2f}",
                     f"{r['image_s']:.2f}", f"{prep['rebuild_merged_s']:.1f}",
                     f"{r['peak_rss_base_mib'] / 1024:.2f} / {r['peak_rss_lora_mib'] / 1024:.2f}", f"{prep['lora_changed_bytes'] / 2**20:.1f}",
                     cell(r["psnr_lora_at_load_vs_merged_engine_db"], ".1f"), "yes" if r["removed_equals_base_bitwise"] else "NO"])  # fmt: skip
    return render_table(header, rows)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m benchmarks.lora_apply", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="the model directory the engines were built from")
    p.add_argument("--engines", type=Path, required=True, help="its engine directory (ONNX artifacts; python export/build_engines.py)")
    p.add_argument("--work", type=Path, default=Path("engines/lora-apply"), help="LoRAs, merged model and engines go here (default: %(default)s)")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--std", type=float, default=0.02, help="the LoRA's A and B values: N(0, std^2) (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--switches", type=int, default=4, help="switches after the load with A: B, A, B, ... (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/lora-apply.json"))
    args = p.parse_args(argv)
    if args.rank < 1 or args.steps < 1 or args.switches < 1 or not args.std > 0:
        p.error("--rank, --steps and --switches must be >= 1 and --std > 0")
    setup_logging(PLAIN)
    from contextdiff_ref.models.model_dir import quiet_loading
    from runtime.backends.openvino import openvino_unavailable_reason
    from runtime.errors import ContextDiffError
    from runtime.options import OpenVINOPrecision

    quiet_loading()
    result: dict[str, Any] = {"machine": machine(cpu_count=multiprocessing.cpu_count()), "backends": {}, "skipped": {},
                              "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()} | {"prompt": PROMPT}}  # fmt: skip
    try:
        result["prepared"] = prepare(args)
        for backend in args.backends:
            if backend == "openvino" and (why := openvino_unavailable_reason(OpenVINOPrecision.F32)):
                result["skipped"][backend] = why
                continue
            logger.info("%s ...", backend)
            result["backends"][backend] = bench_backend(backend, args, result["prepared"])
    except (ContextDiffError, RuntimeError, OSError) as exc:
        p.exit(2, f"error: {exc}\n")
    return write_result(result, args.out, markdown(result))


if __name__ == "__main__":
    sys.exit(main())

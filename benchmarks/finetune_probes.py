"""Probes of a fine-tuned latent shapes pair (issue: fine-tuned ContextDiff loses to its baseline on two objects).

    python -m benchmarks.finetune_probes --run runs/finetune-shapes --json benchmarks/results/finetune-probes.json

``--run`` is a ``benchmarks.finetune_shapes`` work directory: ``model-contextdiff/``, ``model-baseline/`` and the
training folder ``data/``. Each probe answers one of the candidate causes, on the same prompts and seeds:

1. **Seen or unseen compositions**: every two-object score split by whether the caption's composition (either object
   order) occurs in the training folder.
2. **Guidance**: guidance 1 against the evaluation's guidance (3), both models.
3. **The shift under guidance** (method doc §5): at that guidance, ContextDiff with the "guided" variant, and with
   r ≡ 0 at sampling (the adapter's output replaced by zeros: what the UNet alone has learnt).
4. **Terminal signal**: the reader on the decoded x̂_0 of the first sampling steps (the layout the model commits to
   from pure noise), and in training the size of the shift k_t r against the signal √ᾱ_t x_0 per timestep.
5. **Posterior noise**: the VAE posterior's σ against the spread of its means (scaled as trained), and how much the
   adapter's output changes between x_0 = μ + σ ε' (what training feeds it) and x_0 = μ (a smooth x̂_0).

Writes JSON (atomically) and logs a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from benchmarks.harness import cell, render_table
from contextdiff_ref.data.alignment import ImageScore, paired_difference, score_image, summarize
from contextdiff_ref.data.imagefolder import open_image_folder
from contextdiff_ref.data.shapes import Scene, caption, composition, evaluation_sets
from contextdiff_ref.models.model_dir import quiet_loading
from contextdiff_ref.models.text import tokenize
from contextdiff_ref.pipelines.text_to_image import ContextDiffPipeline
from runtime.cli import CLI_ERRORS, TIMED, Parser, error_exit, setup_logging
from runtime.files import atomic_write_json
from runtime.sampling import StepOutput
from runtime.schedule import Schedule

logger = logging.getLogger("benchmarks.finetune_probes")

X0_STEPS = (0, 2, 5, 10)  # sampling steps whose x̂_0 is decoded and read (step 0: from pure noise)
SHIFT_TIMESTEPS = (999, 981, 961, 941, 901, 801, 601, 401, 201, 21)


class ZeroAdapter(torch.nn.Module):
    """r ≡ 0 at sampling: the fine-tuned ContextDiff UNet without its adapter (``config``: the replaced adapter's)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    def forward(self, sample: torch.Tensor, text: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(sample)


def run_config(pipe: ContextDiffPipeline, scenes: Sequence[Scene], guidance: float, variant: str | None, steps: int, batch: int = 8,
               seed: int = 0) -> dict[str, list[ImageScore]]:  # fmt: skip
    """Scores of the final images and of the decoded x̂_0 at each of ``X0_STEPS``, one image per scene; chunk k of
    ``batch`` prompts uses seed ``seed + k`` (benchmarks.alignment's pairing)."""
    finals: list[np.ndarray] = []
    early: dict[int, list[np.ndarray]] = {i: [] for i in X0_STEPS if i < steps}
    for k, start in enumerate(range(0, len(scenes), batch)):
        prompts = [caption(s) for s in scenes[start : start + batch]]
        kept: dict[int, torch.Tensor] = {}

        def keep(out: StepOutput) -> None:
            if out.step in early:
                kept[out.step] = out.pred_original_sample.clone()

        finals.append(pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, seed=seed + k, progress=False, callback=keep,
                           contextual_guidance=variant).images)  # fmt: skip
        for i in early:
            early[i].append(pipe.decode(kept[i], "np"))
    scores = {"final": [score_image(im, s) for im, s in zip(np.concatenate(finals), scenes)]}
    for i in early:
        scores[f"x0_step{i}"] = [score_image(im, s) for im, s in zip(np.concatenate(early[i]), scenes)]
    return scores


def split_summary(scores: list[ImageScore], seen: list[bool]) -> dict[str, Any]:
    out = {"all": summarize(scores)}
    for name, keep in (("seen", True), ("unseen", False)):
        part = [s for s, flag in zip(scores, seen) if flag == keep]
        if part:
            out[name] = summarize(part)
    return out


@torch.no_grad()
def posterior_probe(pipe: ContextDiffPipeline, images: np.ndarray) -> dict[str, float]:
    """The VAE posterior over training images (B, 3, H, W) in [−1, 1], scaled as the fine-tune scales x_0."""
    vae = pipe.components.vae
    dist = vae.encode(torch.from_numpy(images)).latent_dist
    scale = vae.config.scaling_factor
    mean, std = dist.mean * scale, dist.std * scale
    return {"mean_rms": float(mean.pow(2).mean().sqrt()), "mean_spread": float(mean.std()), "sigma_mean": float(std.mean()),
            "sigma_rms": float(std.pow(2).mean().sqrt()), "sigma_over_mean_spread": float(std.mean() / mean.std())}  # fmt: skip


@torch.no_grad()
def shift_probe(pipe: ContextDiffPipeline, images: np.ndarray, captions: list[str], seed: int = 0) -> list[dict[str, float]]:
    """Per timestep: the shift k_t r(x_0, c, t) against the signal √ᾱ_t x_0 and the noise √(1 − ᾱ_t) (root mean squares),
    with x_0 drawn from the posterior as in training; and the adapter's change between x_0 = μ + σ ε' and x_0 = μ."""
    c = pipe.components
    schedule = Schedule(c.scheduler_config)
    dist = c.vae.encode(torch.from_numpy(images)).latent_dist
    scale = c.vae.config.scaling_factor
    generator = torch.Generator().manual_seed(seed)
    x0_mean = dist.mean * scale
    x0_sample = (dist.mean + dist.std * torch.randn(dist.mean.shape, generator=generator)) * scale
    text = c.text_encoder(tokenize(c, captions))[0]
    rms = lambda a: float(a.pow(2).mean().sqrt())  # noqa: E731
    rows = []
    for t in SHIFT_TIMESTEPS:
        if t >= schedule.num_train_timesteps:
            continue
        ts = torch.full((len(captions),), t, dtype=torch.long)
        r_sample, r_mean = c.adapter(x0_sample, text, ts), c.adapter(x0_mean, text, ts)
        ab = schedule.alpha_bar(t)
        k = schedule.shift(t)
        rows.append({"t": t, "sqrt_alpha_bar": ab**0.5, "k": k, "shift_rms": rms(k * r_sample), "signal_rms": rms(ab**0.5 * x0_sample),
                     "noise_rms": (1 - ab) ** 0.5, "shift_over_signal": rms(k * r_sample) / max(rms(ab**0.5 * x0_sample), 1e-12),
                     "adapter_change_sample_vs_mean": rms(r_sample - r_mean) / max(rms(r_mean), 1e-12)})  # fmt: skip
    return rows


def markdown(report: dict) -> str:
    rows = []
    for name, entry in report["generation"].items():
        two = entry["two_object"]["final"]
        one = entry.get("one_object", {}).get("final", {}).get("all", {})
        x0 = entry["two_object"]["x0_step0"]["all"]["full_accuracy"]
        accuracy = lambda d: cell(d["full_accuracy"] if d else None, ".1%")  # noqa: E731
        rows.append([name, accuracy(two.get("seen")), accuracy(two.get("unseen")), accuracy(two["all"]), accuracy(one), f"{x0:.1%}"])
    return render_table(["config", "two-object full acc. seen", "unseen", "all", "one-object", "x̂_0 step 0 (two-object)"], rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(prog="python -m benchmarks.finetune_probes", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="a benchmarks.finetune_shapes work directory")
    p.add_argument("--json", type=Path, default=None, help="report file")
    p.add_argument("--guidance", type=float, default=3.0, help="the evaluation's guidance (default: %(default)s)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--images-per-prompt", type=int, default=4)
    p.add_argument("--one-object-images-per-prompt", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts of each set (quick checks)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(TIMED)
    quiet_loading()
    try:
        folder = open_image_folder(args.run / "data", 32)
        seen_compositions = {composition(t) for t in folder.captions}
        sets = evaluation_sets()
        two = [s for s in sets["two_object"][: args.limit] for _ in range(args.images_per_prompt)]
        one = [s for s in sets["one_object"][: args.limit] for _ in range(args.one_object_images_per_prompt)]
        seen = [composition(caption(s)) in seen_compositions for s in two]
        pipes = {name: ContextDiffPipeline.from_pretrained(args.run / f"model-{name}") for name in ("contextdiff", "baseline")}
        r0 = ContextDiffPipeline(dataclasses.replace(pipes["contextdiff"].components, adapter=ZeroAdapter(pipes["contextdiff"].components.adapter.config)))
        w = args.guidance
        configs: dict[str, tuple[ContextDiffPipeline, float, str | None, bool]] = {  # name: pipeline, guidance, variant, one-object too
            f"baseline w={w:g}": (pipes["baseline"], w, None, True),
            f"contextdiff w={w:g} conditional": (pipes["contextdiff"], w, "conditional", True),
            f"contextdiff w={w:g} guided": (pipes["contextdiff"], w, "guided", True),
            f"contextdiff w={w:g} r=0 at sampling": (r0, w, None, False),
            "baseline w=1": (pipes["baseline"], 1.0, None, True),
            "contextdiff w=1": (pipes["contextdiff"], 1.0, None, True),
        }
        report: dict[str, Any] = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                  "two_object_prompts": {"seen": int(sum(seen)) // args.images_per_prompt,
                                                         "unseen": (len(seen) - int(sum(seen))) // args.images_per_prompt},
                                  "generation": {}, "difference_vs_baseline": {}}  # fmt: skip
        raw: dict[str, dict[str, list[ImageScore]]] = {}
        for name, (pipe, guidance, variant, with_one) in configs.items():
            scores = run_config(pipe, two, guidance, variant, args.steps)
            raw[name] = scores
            entry = {"two_object": {key: split_summary(value, seen) for key, value in scores.items()}}
            if with_one:
                entry["one_object"] = {key: {"all": summarize(value)} for key, value in run_config(pipe, one, guidance, variant, args.steps).items()}
            report["generation"][name] = entry
            logger.info("%s: two-object %s", name, {k: v["all"]["full_accuracy"] for k, v in entry["two_object"].items()})
        for name, scores in raw.items():
            base = f"baseline w={1 if name.endswith('w=1') else w:g}"
            if name.startswith("contextdiff"):
                report["difference_vs_baseline"][name] = {
                    part: paired_difference([s for s, f in zip(scores["final"], seen) if keep is None or f == keep],
                                            [s for s, f in zip(raw[base]["final"], seen) if keep is None or f == keep])["full_accuracy"]
                    for part, keep in (("all", None), ("seen", True), ("unseen", False)) if keep is None or keep in seen
                }  # fmt: skip
        train_images, train_captions = folder.batch(np.arange(256))
        report["vae_posterior"] = posterior_probe(pipes["contextdiff"], train_images)
        report["shift_in_training"] = shift_probe(pipes["contextdiff"], train_images[:64], train_captions[:64])
        logger.info("\n%s", markdown(report))
        logger.info("posterior: %s", report["vae_posterior"])
        for row in report["shift_in_training"]:
            logger.info("shift: %s", row)
        if args.json is not None:
            atomic_write_json(args.json, report)
    except CLI_ERRORS as exc:
        return error_exit(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

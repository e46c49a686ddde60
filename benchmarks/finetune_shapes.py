"""Proof that fine-tuning learns: the whole "train your own" path on data this project owns, on a CPU budget.

    python -m benchmarks.finetune_shapes --out runs/finetune-shapes --json benchmarks/results/finetune-shapes.json

1. A tiny VAE (diffusers AutoencoderKL, 32 × 32 images -> 4 × 16 × 16 latents) trained on the shapes stream, its
   scaling factor set to 1 / std of its latents as Stable Diffusion's was.
2. A Stable-Diffusion-shaped base written by diffusers' own ``StableDiffusionPipeline.save_pretrained``: that VAE, a
   fresh UNet (latent, cross-attention) and CLIP text encoder, SD's PNDM scheduler config (scaled-linear betas,
   leading spacing; v prediction by default, as SD 2.x).
3. ``contextdiff_ref.models.attach`` adds the zero-output adapter (recording ``--guidance`` as the recommended scale);
   ``contextdiff_ref.data.imagefolder`` writes the shapes dataset as an image folder, by default without any
   composition of the evaluation's two-object set (``--hold-out``: every one of them is unseen in training).
4. ``contextdiff_ref.finetune`` trains it twice alike — ContextDiff and the r ≡ 0 baseline — UNet, adapter and text
   encoder (the base's are untrained), with fine-tuning's defaults unless told (``--zero-terminal-snr``,
   ``--posterior-sample``), and exports both.
5. ``benchmarks.alignment.evaluate`` scores both with the dataset's reader on three prompt sets — one object, two
   objects seen in training, two objects held out — at guidance 1 and at ``--guidance`` (ContextDiff under each
   ``--variants`` of method doc §5), ``--images-per-prompt`` images each, with paired 95% intervals against the
   baseline at the same guidance; the VAE's own reconstructions of the evaluation scenes are scored too (the
   ceiling a latent model can reach).

Every stage is resumable (rerun the command): the VAE and the fine-tuning runs checkpoint, finished stages are
kept. Writes the report as JSON (atomically) and logs a markdown table. ``benchmarks.finetune_probes`` examines a
finished work directory further.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.alignment import GenerateFn, evaluate, markdown_table, reference_generate_fn, runtime_generate_fn
from contextdiff_ref.data.alignment import summarize
from contextdiff_ref.data.imagefolder import open_image_folder, write_shapes_folder
from contextdiff_ref.data.shapes import (
    SIZE,
    caption,
    composition,
    evaluation_sets,
    one_object_scenes,
    render,
    seen_two_object_scenes,
    training_batch,
    two_object_scenes,
    vocabulary,
)
from contextdiff_ref.models.attach import attach_adapter
from contextdiff_ref.models.defaults import LATENT_MODEL_NAME
from contextdiff_ref.models.model_dir import quiet_loading
from contextdiff_ref.training.finetune import FinetuneConfig, Finetuner, export_finetuned
from contextdiff_ref.training.loop import CHECKPOINT, read_checkpoint, write_checkpoint
from runtime.cli import CLI_ERRORS, TIMED, Parser, error_exit, setup_logging
from runtime.files import atomic_directory, atomic_write_json
from runtime.metrics import psnr
from runtime.schedule import ContextualGuidance

logger = logging.getLogger("benchmarks.finetune_shapes")

TEXT_LENGTH, TEXT_DIM = 20, 64
SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)  # fmt: skip


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=16, sample_size=SIZE)  # fmt: skip


def train_vae(out: Path, steps: int, batch: int = 32, kl_weight: float = 1e-6, seed: int = 0):
    """Reconstruction (MSE) + a small KL term on the shapes stream; resumable from ``out/checkpoint.pt``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = build_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    step = 0
    if (out / CHECKPOINT).is_file():
        state = read_checkpoint(out / CHECKPOINT)
        vae.load_state_dict(state["vae"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
    vae.train()
    start = time.perf_counter()
    while step < steps:
        images, _ = training_batch(seed + 1000, step, batch)
        x = torch.from_numpy(images)
        dist = vae.encode(x).latent_dist
        recon = vae.decode(dist.sample(torch.Generator().manual_seed(step))).sample
        loss = torch.nn.functional.mse_loss(recon, x) + kl_weight * dist.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step % 100 == 0 or step == steps:
            logger.info("vae step %d loss %.5f (%.2f s/step)", step, float(loss.detach()), (time.perf_counter() - start) / 100)
            start = time.perf_counter()
            out.mkdir(parents=True, exist_ok=True)
            write_checkpoint({"vae": vae.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, out / CHECKPOINT)
    vae.eval().requires_grad_(False)
    with torch.no_grad():  # Stable Diffusion's recipe: scale latents to unit variance
        images, _ = training_batch(seed + 2000, 0, 256)
        std = float(vae.encode(torch.from_numpy(images)).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=1.0 / std)
    return vae


def reconstruction_scores(vae) -> dict:
    """The reader on the VAE's reconstructions of the evaluation scenes (the ceiling of a latent model) and PSNR."""
    from contextdiff_ref.data.alignment import score_image

    report = {}
    for name, scenes in evaluation_sets().items():
        x = np.stack([render(s) for s in scenes]).transpose(0, 3, 1, 2) * 2 - 1
        with torch.no_grad():
            recon = vae.decode(vae.encode(torch.from_numpy(x.astype(np.float32))).latent_dist.mean).sample.numpy()
        images = np.clip((recon + 1) / 2, 0, 1).transpose(0, 2, 3, 1)
        report[name] = {**summarize([score_image(i, s) for i, s in zip(images, scenes)]), "psnr_db": psnr(images, ((x + 1) / 2).transpose(0, 2, 3, 1))}
    return report


def write_base(path: Path, vae, prediction_type: str, seed: int = 0) -> None:
    """A Stable-Diffusion-shaped directory, written by diffusers' StableDiffusionPipeline itself."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from contextdiff_ref.models.tiny import make_clip_tokenizer

    tokenizer = make_clip_tokenizer(vocabulary(), max_length=TEXT_LENGTH)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=TEXT_LENGTH, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))  # fmt: skip
        unet = UNet2DConditionModel(
            sample_size=SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=TEXT_DIM,
            attention_head_dim=8, norm_num_groups=16,
        )  # fmt: skip
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=PNDMScheduler(**SD_SCHEDULER, prediction_type=prediction_type),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)  # fmt: skip
    pipe.save_pretrained(path, safe_serialization=True)
    # Stable Diffusion's own scheduler_config.json carries "clip_sample": false for DDIM (PNDM has no such argument)
    config_path = path / "scheduler" / "scheduler_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "clip_sample": False}, indent=2) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = FinetuneConfig(model="", data="")
    p = Parser(prog="python -m benchmarks.finetune_shapes", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="work directory (resumable)")
    p.add_argument("--json", type=Path, default=None, help="report file")
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--images", type=int, default=4000, help="images in the shapes folder (default: %(default)s)")
    p.add_argument("--hold-out", action=argparse.BooleanOptionalAction, default=True,
                   help="keep the evaluation's two-object compositions out of the folder (default: %(default)s)")
    p.add_argument("--steps", type=int, default=2500, help="fine-tuning steps per model (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--prediction-type", default="v_prediction", choices=["epsilon", "v_prediction"],
                   help="the base's (SD 1.x: epsilon, SD 2.x: v_prediction; default: %(default)s)")
    p.add_argument("--high-noise-fraction", type=float, default=0.25, help="(default: %(default)s)")
    p.add_argument("--zero-terminal-snr", action=argparse.BooleanOptionalAction, default=d.zero_terminal_snr,
                   help="fine-tune on the base's schedule rescaled to zero terminal SNR (contextdiff_ref.finetune's default: %(default)s)")
    p.add_argument("--posterior-sample", action=argparse.BooleanOptionalAction, default=d.posterior_sample,
                   help="x_0 = a sample of the VAE posterior instead of its mean (contextdiff_ref.finetune's default: %(default)s)")
    p.add_argument("--guidance", type=float, default=3.0, help="the models' recommended guidance scale, evaluated beside 1 (default: %(default)s)")
    p.add_argument("--variants", nargs="+", default=["conditional", "guided"], choices=[v.value for v in ContextualGuidance],
                   help="contextual guidance variants evaluated at --guidance (default: %(default)s)")
    p.add_argument("--sampling-steps", type=int, default=50)
    p.add_argument("--evaluation-backend", choices=["runtime", "reference"], default="runtime",
                   help="runtime.Generator on ONNX Runtime (engines built in OUT/engines) or the PyTorch reference (default: %(default)s)")
    p.add_argument("--images-per-prompt", type=int, default=4)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--ship", type=Path, default=None, metavar="DIR",
                   help="also copy the fine-tuned ContextDiff model to DIR/shapes-latent-contextdiff (contextdiff_ref/models: the "
                        "shipped latent model; its baseline stays in OUT/model-baseline)")
    return p.parse_args(argv)


def evaluation_configs(out: Path, steps: int, guidance: float, variants: list[str], backend: str = "runtime",
                       batch: int = 8) -> tuple[dict[str, GenerateFn], list[tuple[str, str]]]:  # fmt: skip
    """The generators compared — ``runtime.Generator`` on ONNX Runtime (engines built in ``out/engines``) or the
    reference pipeline: both models at guidance 1 and at ``guidance`` (ContextDiff once per variant), and the pairs
    whose paired differences are reported."""

    def fn(name: str, w: float, variant: str | None = None) -> GenerateFn:
        if backend == "reference":
            return reference_generate_fn(out / f"model-{name}", steps, w, contextual_guidance=variant)
        return runtime_generate_fn(out / f"model-{name}", out / "engines" / name, batch, steps, w, contextual_guidance=variant)

    models = {"contextdiff w=1": fn("contextdiff", 1.0), "baseline w=1": fn("baseline", 1.0), f"baseline w={guidance:g}": fn("baseline", guidance)}
    pairs = [("contextdiff w=1", "baseline w=1")]
    for variant in variants:
        models[f"contextdiff w={guidance:g} {variant}"] = fn("contextdiff", guidance, variant)
        pairs.append((f"contextdiff w={guidance:g} {variant}", f"baseline w={guidance:g}"))
    return models, pairs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(TIMED)
    quiet_loading()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out
    try:
        vae = train_vae(out / "vae", args.vae_steps)
        report: dict = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "vae": reconstruction_scores(vae)}
        logger.info("VAE reconstructions: %s", report["vae"])
        if not (out / "model").is_dir():
            write_base(out / "sd", vae, args.prediction_type)
            attach_adapter(out / "sd", out / "model", recommended_guidance_scale=args.guidance)
        held_out = [caption(s) for s in two_object_scenes()] if args.hold_out else []
        if not (out / "data").is_dir():
            write_shapes_folder(out / "data", args.images, exclude=held_out)
        folder = open_image_folder(out / "data", SIZE)
        report["training"] = {}
        for name, baseline in (("contextdiff", False), ("baseline", True)):
            run = out / f"run-{name}"
            config = FinetuneConfig(model=str((out / "model").resolve()), data=str((out / "data").resolve()), baseline=baseline, steps=args.steps,
                                    batch_size=args.batch_size, learning_rate=args.lr, warmup_steps=200, train_text_encoder=True,
                                    high_noise_fraction=args.high_noise_fraction, zero_terminal_snr=args.zero_terminal_snr,
                                    posterior_sample=args.posterior_sample)  # fmt: skip
            trainer = Finetuner(config, run)
            if trainer.step < config.steps:
                trainer.run(checkpoint_every=250, log_every=50)
            records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
            report["training"][name] = {"steps": trainer.step, "final_loss": records[-1]["loss"],
                                        "seconds_per_step": float(np.median([r["seconds_per_step"] for r in records]))}  # fmt: skip
            if not (out / f"model-{name}").is_dir():
                export_finetuned(run, out / f"model-{name}")
            if args.ship is not None and name == "contextdiff":
                with atomic_directory(args.ship / LATENT_MODEL_NAME) as tmp:
                    shutil.copytree(out / f"model-{name}", tmp, dirs_exist_ok=True)
        sets = {"one_object": one_object_scenes(), "two_object_seen": seen_two_object_scenes(folder.captions), "two_object": two_object_scenes()}
        folder_compositions = {composition(t) for t in folder.captions}
        report["sets"] = {name: {"prompts": len(scenes), "in_training_folder": sum(composition(caption(s)) in folder_compositions for s in scenes)}
                          for name, scenes in sets.items()}  # fmt: skip
        models, pairs = evaluation_configs(out, args.sampling_steps, args.guidance, args.variants, args.evaluation_backend)
        alignment, _ = evaluate(models, images_per_prompt=args.images_per_prompt, sets=sets, pairs=pairs)
        report.update(alignment)
        print(markdown_table(alignment))
        if args.json is not None:
            atomic_write_json(args.json, report)
    except CLI_ERRORS as exc:
        return error_exit(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fine-tuning from a Stable Diffusion directory: two-process DDP equals one process with twice the batch, exact
resume, LoRA trained and merged on export, the baseline, cached latents, and bad input named."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from contextdiff_ref.data.imagefolder import write_shapes_folder
from contextdiff_ref.finetune import main
from contextdiff_ref.models.attach import attach_adapter
from contextdiff_ref.models.model_dir import load_model_dir
from contextdiff_ref.training.finetune import LORA_FILE, FinetuneConfig, Finetuner, export_finetuned
from contextdiff_ref.training.loop import CHECKPOINT
from runtime.errors import ContextDiffError, InvalidArgumentError, ModelDirectoryError
from tests.contextdiff_ref.models.test_attach import write_sd_dir

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    """A tiny latent ContextDiff made from a Stable Diffusion directory, and 12 shapes images."""
    root = tmp_path_factory.mktemp("finetune")
    attach_adapter(write_sd_dir(root / "sd"), root / "model", hidden_dim=32, num_layers=1)
    write_shapes_folder(root / "data", 12)
    return root


def config(sd, **kw):
    return FinetuneConfig(**{"model": str(sd / "model"), "data": str(sd / "data"), "batch_size": 2, "warmup_steps": 0, "learning_rate": 1e-3, **kw})


def trained(trainer):
    return {f"{i}.{k}": v.detach().clone() for i, state in enumerate(trainer.module_states()) for k, v in state.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_with_twice_the_batch(sd, tmp_path):
    """accelerate launch, 2 CPU processes (gloo), batch 2 each, one step vs one process with batch 4: the same loss
    and the same all-reduced gradient (AdamW's first moment), weights equal on both ranks."""
    common = ["-m", "contextdiff_ref.finetune", "--model", str(sd / "model"), "--data", str(sd / "data"), "--steps", "1",
              "--warmup-steps", "0", "--lr", "1e-3", "--log-every", "1"]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port())]  # fmt: skip
    two = subprocess.run(launch + common + ["--out", str(tmp_path / "two"), "--batch-size", "2"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable] + common + ["--out", str(tmp_path / "one"), "--batch-size", "4"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = (torch.load(tmp_path / run / CHECKPOINT, weights_only=True) for run in ("two", "one"))
    assert a["world_size"] == 2 and b["world_size"] == 1 and a["samples_seen"] == b["samples_seen"] == 4
    assert len(a["rank_weight_sums"]) == 2 and a["rank_weight_sums"][0] == a["rank_weight_sums"][1]  # both ranks, bitwise
    loss = [json.loads((tmp_path / run / "log.jsonl").read_text())["loss"] for run in ("two", "one")]
    assert loss[0] == pytest.approx(loss[1], rel=1e-6)
    grads_a, grads_b = ([s["exp_avg"] for _, s in sorted(x["optimizer"]["state"].items())] for x in (a, b))
    assert len(grads_a) == len(grads_b) > 0
    largest = max(g.abs().max() for g in grads_b)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-5 * float(largest))
    # AdamW normalises each coordinate by its own gradient's size, so where a gradient is near its ε (1e-8) float
    # rounding moves the update by a fraction of a step: the weights agree to within one step (lr = 1e-3)
    for sa, sb in zip(a["modules"], b["modules"]):
        assert sa.keys() == sb.keys()
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-3)


def test_resumed_run_equals_an_uninterrupted_one(sd, tmp_path):
    straight = Finetuner(config(sd, steps=4), tmp_path / "a")
    straight.run(checkpoint_every=100)
    Finetuner(config(sd, steps=2), tmp_path / "b").run(checkpoint_every=100)
    resumed = Finetuner(config(sd, steps=4), tmp_path / "b")
    assert resumed.step == 2
    resumed.run(checkpoint_every=100)
    x, y = trained(straight), trained(resumed)
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    fresh = trained(Finetuner(config(sd, steps=4), tmp_path / "fresh"))
    assert not torch.equal(x["1.proj_out.weight"], fresh["1.proj_out.weight"])  # the adapter trained
    assert not any(k.startswith("2.") for k in x)  # the text encoder is frozen: not trained, not checkpointed


def test_lora_trains_only_lora_weights_and_export_merges_them(sd, tmp_path):
    trainer = Finetuner(config(sd, steps=3, lora_rank=4), tmp_path / "lora")
    base_unet = {k: v.clone() for k, v in trainer.components.unet.state_dict().items() if "lora" not in k}
    trainer.run(checkpoint_every=3, sample_every=3, sample_prompts=("a red circle at the top left", "a blue square"))
    assert (tmp_path / "lora" / "samples" / "step-000003.png").is_file()
    unet_state = torch.load(tmp_path / "lora" / CHECKPOINT, weights_only=True)["modules"][0]
    assert unet_state and all("lora_" in k for k in unet_state)
    assert all(torch.equal(v, trainer.components.unet.state_dict()[k]) for k, v in base_unet.items())  # base weights frozen
    exported = load_model_dir(export_finetuned(tmp_path / "lora", tmp_path / "exported"))
    assert not any("lora" in k for k in exported.unet.state_dict())
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), trainer.ema_weights():
        expected = trainer.components.unet.eval()(x, 500, encoder_hidden_states=text).sample
        base = load_model_dir(sd / "model").unet(x, 500, encoder_hidden_states=text).sample
        assert (expected - base).abs().max() > 1e-4  # LoRA changed the UNet
        torch.testing.assert_close(exported.unet(x, 500, encoder_hidden_states=text).sample, expected, rtol=1e-4, atol=1e-5)
    # the run directory's LoRA file, read by the runtime and merged by the Torch backend, gives the exported UNet's weights
    from contextdiff_ref.pipelines.torch_runner import torch_generator
    from runtime.lora import read_lora
    from runtime.specs import Component

    lora = read_lora(tmp_path / "lora" / LORA_FILE)
    assert {c for c, _, _ in lora.pairs} == {Component.UNET} and not lora.unknown and all(p.alpha == 4.0 for p in lora.pairs.values())
    merged = torch_generator(sd / "model", loras=[(tmp_path / "lora" / LORA_FILE, 1.0)]).runners[Component.UNET].weights()
    want = exported.unet.state_dict()
    assert len(lora.pairs) == sum(name.endswith((".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight")) for name in merged)
    for name, value in merged.items():
        torch.testing.assert_close(value.detach(), want[name], rtol=1e-6, atol=1e-7)


def test_baseline_keeps_r_zero_and_cached_latents_train_alike(sd, tmp_path):
    base = Finetuner(config(sd, steps=2, baseline=True), tmp_path / "base")
    base.run(checkpoint_every=100)
    assert all(torch.count_nonzero(p) == 0 for p in base.components.adapter.proj_out.parameters())
    plain = Finetuner(config(sd, steps=1), tmp_path / "plain")
    plain.run(checkpoint_every=100, log_every=1)
    cached = Finetuner(config(sd, steps=1, cache_latents=True), tmp_path / "cached")
    cached.run(checkpoint_every=100, log_every=1)
    assert (tmp_path / "cached" / "latents.safetensors").is_file()
    losses = [json.loads((tmp_path / run / "log.jsonl").read_text())["loss"] for run in ("plain", "cached")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_bad_input_is_named(sd, tmp_path, capsys):
    Finetuner(config(sd, steps=1), tmp_path / "run").run(checkpoint_every=1)
    with pytest.raises(ContextDiffError, match="other settings.*lora_rank"):
        Finetuner(config(sd, steps=2, lora_rank=2), tmp_path / "run")
    state = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    torch.save({**state, "world_size": 2}, tmp_path / "run" / CHECKPOINT)
    with pytest.raises(ContextDiffError, match="trained by 2 processes"):
        Finetuner(config(sd, steps=2), tmp_path / "run")
    with pytest.raises(InvalidArgumentError, match="lora_rank"):
        config(sd, lora_rank=-1)
    with pytest.raises(InvalidArgumentError, match="mixed_precision"):
        config(sd, mixed_precision="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidArgumentError, match="fp16"):
            Finetuner(config(sd, mixed_precision="fp16"), tmp_path / "fp16")
    with pytest.raises(InvalidArgumentError, match="resolution"):
        Finetuner(config(sd, resolution=30), tmp_path / "r30")
    no_vae = tmp_path / "no-vae"
    attach_adapter(write_sd_dir(tmp_path / "sd"), no_vae)
    for f in (no_vae / "vae").iterdir():
        f.unlink()
    (no_vae / "vae").rmdir()
    with pytest.raises(ModelDirectoryError, match="no vae/"):
        Finetuner(config(sd, model=str(no_vae)), tmp_path / "x")
    assert main(["--out", str(tmp_path / "y"), "--data", str(sd / "data")]) == 2
    assert "--model" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["--out", str(tmp_path / "z"), "--model", str(sd / "model"), "--data", str(tmp_path / "empty")]) == 2
    assert "no metadata.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "z" / CHECKPOINT).exists()


def test_gradient_checkpointing_computes_the_same_step(sd, tmp_path):
    runs = [Finetuner(config(sd, steps=1, gradient_checkpointing=gc), tmp_path / f"gc{gc}") for gc in (False, True)]
    for run in runs:
        run.run(checkpoint_every=100)
    a, b = (trained(run) for run in runs)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-3)  # within one AdamW step (lr 1e-3)
    losses = [json.loads((tmp_path / f"gc{gc}" / "log.jsonl").read_text())["loss"] for gc in (False, True)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


@pytest.mark.slow
def test_bf16_mixed_precision_runs(sd, tmp_path):
    """accelerate's bf16 autocast (the GPU setting; the CPU has an autocast for it too), in its own process: the
    accelerate state of a process takes one precision."""
    args = ["--model", str(sd / "model"), "--data", str(sd / "data"), "--out", str(tmp_path / "bf16"), "--steps", "2", "--batch-size", "2",
            "--mixed-precision", "bf16", "--log-every", "1"]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "contextdiff_ref.finetune", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "bf16" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(0 < r["loss"] < 10 for r in records)


def test_zero_terminal_snr_trains_on_and_exports_the_rescaled_schedule(sd, tmp_path):
    """Method doc §5, "Terminal signal": the SD base (ε, leading) is trained and exported at zero terminal SNR (v,
    trailing); the base directory keeps its schedule; a resume with the other setting is refused naming it, and a
    checkpoint written before the setting existed reads as trained without it."""
    assert FinetuneConfig(model="", data="").zero_terminal_snr is True  # fine-tuning's default (docs/fine-tuning.md)
    run = Finetuner(config(sd, steps=2), tmp_path / "zsnr")
    assert run.objective.schedule.alphas_cumprod[-1] == 0.0 and run.components.scheduler_config.prediction_type.value == "v_prediction"
    run.run(checkpoint_every=2)
    written = json.loads((export_finetuned(tmp_path / "zsnr", tmp_path / "exported") / "scheduler" / "scheduler_config.json").read_text())
    assert (written["rescale_betas_zero_snr"], written["timestep_spacing"], written["prediction_type"]) == (True, "trailing", "v_prediction")
    assert load_model_dir(sd / "model").scheduler_config.rescale_betas_zero_snr is False
    with pytest.raises(ContextDiffError, match="other settings.*zero_terminal_snr"):
        Finetuner(config(sd, steps=3, zero_terminal_snr=False), tmp_path / "zsnr")
    state = torch.load(tmp_path / "zsnr" / CHECKPOINT, weights_only=True)
    del state["config"]["zero_terminal_snr"]
    torch.save(state, tmp_path / "zsnr" / CHECKPOINT)
    assert Finetuner(config(sd, steps=3, zero_terminal_snr=False), tmp_path / "zsnr").step == 2
    with pytest.raises(ContextDiffError, match="other settings.*zero_terminal_snr"):
        Finetuner(config(sd, steps=3), tmp_path / "zsnr")
    with pytest.raises(InvalidArgumentError, match="zero_terminal_snr"):
        config(sd, zero_terminal_snr="yes")


def test_latents_are_the_posterior_mean_unless_a_sample_is_asked_for(sd, tmp_path, pixel_model_dir, caplog):
    """x_0 = μ · scale by default (the adapter sees what the sampler's smooth x̂_0 resembles); --posterior-sample draws
    μ + σ ε'. A pixel-space model says, in one line, that the latent options do nothing for it."""
    seen = {}
    for sample in (False, True):
        trainer = Finetuner(config(sd, steps=1, posterior_sample=sample), tmp_path / f"sample-{sample}")
        loss = trainer.objective.loss
        trainer.objective.loss = lambda x0, prompts, draws, sample=sample, loss=loss: loss(seen.setdefault(sample, x0.detach().clone()), prompts, draws)
        trainer.train_step()
    indices = trainer.data.positions(0, 0, 2)
    mean, std = trainer._latent_statistics(indices)
    scale = trainer.components.vae.config.scaling_factor
    torch.testing.assert_close(seen[False], mean * scale, rtol=0, atol=0)
    noise = (seen[True] / scale - mean) / std
    assert 0.5 < float(noise.std()) < 1.5 and abs(float(noise.mean())) < 0.2  # ε' ~ N(0, 1)
    with caplog.at_level("WARNING"):
        Finetuner(config(sd, model=str(pixel_model_dir), posterior_sample=True, cache_latents=True), tmp_path / "pixel")
    assert "posterior_sample has no effect" in caplog.text and "cache_latents has no effect" in caplog.text

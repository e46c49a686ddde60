"""Training script: deterministic resume, atomic checkpoints, EMA model directory, baseline, CLI errors."""

from __future__ import annotations

import json

import pytest
import torch

from contextdiff_ref.models.model_dir import load_model_dir
from contextdiff_ref.train import main
from contextdiff_ref.training.loop import CHECKPOINT
from contextdiff_ref.training.shapes_trainer import TrainConfig, Trainer

TINY = dict(batch_size=2, warmup_steps=2)


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v.clone() for i, m in enumerate(trainer._modules()) for k, v in m.state_dict().items()}


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    straight = Trainer(TrainConfig(steps=4, **TINY), tmp_path / "a")
    straight.run(checkpoint_every=100)
    first = Trainer(TrainConfig(steps=2, **TINY), tmp_path / "b")
    first.run(checkpoint_every=100)
    resumed = Trainer(TrainConfig(steps=4, **TINY), tmp_path / "b")
    assert resumed.step == 2
    resumed.run(checkpoint_every=100)
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["1.conv_out.weight"], Trainer(TrainConfig(steps=4, **TINY), tmp_path / "fresh").components.unet.conv_out.weight)


def test_resume_drops_the_log_records_of_lost_steps(tmp_path):
    Trainer(TrainConfig(steps=2, **TINY), tmp_path / "r").run(checkpoint_every=100, log_every=1)
    with open(tmp_path / "r" / "log.jsonl", "a", encoding="utf-8") as log:  # a run that logged step 3, then was killed
        log.write(json.dumps({"step": 3, "loss": 1.0}) + "\n" + '{"step": 4, "lo')  # and a half-written line
    resumed = Trainer(TrainConfig(steps=4, **TINY), tmp_path / "r")
    assert resumed.step == 2
    assert [json.loads(line)["step"] for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()] == [1, 2]


def test_checkpoint_writes_a_loadable_ema_model_dir_and_baseline_keeps_r_zero(tmp_path):
    trainer = Trainer(TrainConfig(steps=3, baseline=True, **TINY), tmp_path / "run")
    trainer.run(checkpoint_every=2)
    assert (tmp_path / "run" / CHECKPOINT).is_file() and not list((tmp_path / "run").glob(".*tmp*"))
    components = load_model_dir(tmp_path / "run" / "model")
    assert all(torch.count_nonzero(p) == 0 for p in components.adapter.proj_out.parameters())  # r ≡ 0
    assert components.scheduler_config.prediction_type.value == "v_prediction"
    # the exported weights are the EMA's, not the raw ones
    raw = trainer.components.unet.conv_in.weight.detach()
    assert not torch.equal(components.unet.conv_in.weight, raw)
    assert torch.allclose(components.unet.conv_in.weight, raw, atol=0.1)
    trainer.ema.copy_to(trainer.parameters)
    assert torch.equal(components.unet.conv_in.weight, trainer.components.unet.conv_in.weight.detach())


def test_cli_resume_refuses_other_settings_and_bad_arguments(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--out", str(out), "--steps", "1", "--batch-size", "2", "--checkpoint-every", "1"]) == 0
    assert main(["--out", str(out), "--steps", "2", "--batch-size", "2", "--baseline"]) == 2
    assert "baseline" in capsys.readouterr().err
    assert main(["--out", str(out), "--steps", "1", "--batch-size", "2"]) == 0  # already there: nothing to do
    assert main(["--out", str(out), "--steps", "0"]) == 2
    assert "steps" in capsys.readouterr().err
    assert main(["--out", str(out), "--steps", "3", "--checkpoint-every", "0"]) == 2
    assert "--checkpoint-every" in capsys.readouterr().err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / CHECKPOINT).write_bytes(b"not a checkpoint")
    assert main(["--out", str(tmp_path / "broken"), "--steps", "2", "--batch-size", "2"]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_loss_is_logged(tmp_path):
    trainer = Trainer(TrainConfig(steps=4, **TINY), tmp_path / "run")
    trainer.run(checkpoint_every=100, log_every=2)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4] and all(r["loss"] > 0 and r["seconds_per_step"] > 0 for r in records)


@pytest.mark.parametrize("field,value", [("steps", 0), ("batch_size", -1), ("learning_rate", 0.0), ("ema_decay", 1.0), ("high_noise_fraction", 1.5), ("snr_gamma", -1.0)])
def test_bad_config(field, value):
    from runtime.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match=field):
        TrainConfig(**{field: value})


def test_export_writes_the_ema_model_with_the_recommended_guidance(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--out", str(out), "--steps", "2", "--batch-size", "2"]) == 0
    assert main(["--out", str(out), "--export", str(tmp_path / "shipped"), "--recommended-guidance", "3"]) == 0
    shipped, trained = load_model_dir(tmp_path / "shipped"), load_model_dir(out / "model")
    assert shipped.recommended_guidance_scale == 3.0
    assert torch.equal(shipped.unet.conv_out.weight, trained.unet.conv_out.weight)
    assert main(["--out", str(tmp_path / "nothing"), "--export", str(tmp_path / "x")]) == 2
    assert "no checkpoint" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["--out", str(out), "--export", str(tmp_path / "y"), "--recommended-guidance", "-1"]) == 2
    assert "--recommended-guidance" in capsys.readouterr().err


def test_init_from_starts_a_new_phase_from_another_run(tmp_path, capsys):
    first = Trainer(TrainConfig(steps=2, **TINY), tmp_path / "phase1")
    first.run(checkpoint_every=100)
    phase2 = TrainConfig(steps=4, snr_gamma=None, init_from=str(tmp_path / "phase1" / CHECKPOINT), **TINY)
    second = Trainer(phase2, tmp_path / "phase2")
    assert second.step == 2 and second.learning_rate(2) == phase2.learning_rate / 2  # warm-up again from step 2
    a, b = weights(first), weights(second)
    assert all(torch.equal(a[k], b[k]) for k in a)
    second.run(checkpoint_every=100)
    resumed = Trainer(TrainConfig(steps=4, snr_gamma=None, **TINY), tmp_path / "phase2")  # resumes; init_from no longer needed
    assert resumed.step == 4 and resumed.start_step == 2
    assert main(["--out", str(tmp_path / "p3"), "--steps", "3", "--batch-size", "2", "--baseline", "--init-from", str(tmp_path / "phase1" / CHECKPOINT)]) == 2
    assert "baseline" in capsys.readouterr().err

"""The reference CLI (the README's main command) and the lean import of the runtime."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def run(*args, env=None):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_main_command_writes_a_png(pixel_model_dir, tmp_path):
    out = tmp_path / "out.png"
    result = run("-m", "contextdiff_ref", "a red circle at the top left", "-o", str(out), "--model", str(pixel_model_dir), "--steps", "3")
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (32, 32)


@pytest.mark.slow
def test_main_command_uses_the_shipped_default_model(tmp_path):
    out = tmp_path / "out.png"
    result = run("-m", "contextdiff_ref", "a red circle at the top left", "-o", str(out), "--steps", "2")
    assert result.returncode == 0, result.stderr
    assert "shapes-contextdiff" in result.stdout and Image.open(out).size == (32, 32)


@pytest.mark.slow
def test_cli_errors_are_one_clear_line(pixel_model_dir, tmp_path, capsys):
    from contextdiff_ref.__main__ import main

    bad_steps = run("-m", "contextdiff_ref", "x", "-o", str(tmp_path / "a.png"), "--model", str(pixel_model_dir), "--steps", "0")  # a real process
    assert bad_steps.returncode == 2 and "invalid num_inference_steps=0" in bad_steps.stderr and "Traceback" not in bad_steps.stderr
    assert main(["x", "-o", str(tmp_path / "b.png"), "--model", str(tmp_path / "nope")]) == 2  # the same main, in this process
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "nope") in err[0] and not (tmp_path / "b.png").exists()


def test_import_runtime_stays_lean():
    code = ("import sys, runtime, runtime.schedule, runtime.sampling, runtime.validation, runtime.noise, runtime.images, "
            "runtime.specs, runtime.manifest, runtime.backends.ort, runtime.backends.openvino, runtime.backends.tensorrt, "
            "runtime.backends.selection, runtime.generator, runtime.__main__; "
            "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; "
            "assert not heavy, heavy")  # fmt: skip
    result = run("-c", code)
    assert result.returncode == 0, result.stderr


def test_runtime_cli_generates_from_an_engine_directory(pixel_fp32_dir, tmp_path):
    out = tmp_path / "grid.png"
    result = run("-m", "runtime", "a red circle at the top left", "-o", str(out), "--engines", str(pixel_fp32_dir), "--steps", "3", "--num-images", "3")
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (64, 64)  # 3 images in a 2 x 2 grid of 32 x 32
    missing = run("-m", "runtime", "x", "-o", str(tmp_path / "a.png"), "--engines", str(tmp_path / "none"))
    assert missing.returncode == 2 and "engine directory not found" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.parametrize("failure", ["load", "run"])
def test_a_failing_runner_is_the_clis_one_line_error(pixel_fp32_dir, tmp_path, monkeypatch, capsys, failure):
    """A backend's own exception (here ONNX Runtime failing to load or run a session, as its Fail/RuntimeError does)
    reaches the command line as the package's RunnerError: one line naming the component, exit status 2."""
    import onnxruntime as ort

    from runtime.__main__ import main

    def fail(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : simulated backend failure\nstack frames ...")

    monkeypatch.setattr(ort, "InferenceSession", fail) if failure == "load" else monkeypatch.setattr(ort.InferenceSession, "run", fail)
    code = main(["x", "-o", str(tmp_path / "a.png"), "--engines", str(pixel_fp32_dir), "--steps", "2", "--backend", "onnxruntime-cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: OnnxRuntimeRunner "), err
    assert "simulated backend failure" in err[0] and "stack frames" not in err[0]
    assert not (tmp_path / "a.png").exists()

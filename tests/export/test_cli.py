"""``python export/build_engines.py``: the default build, its table, and one clear line for each bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from export.artifacts import read_manifest
from export.build_engines import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_no_arguments_builds_the_default_model(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CONTEXTDIFF_ONNX_CACHE"} | {"PYTHONPATH": str(ROOT)}  # a fresh machine: it exports
    run = lambda: subprocess.run([sys.executable, str(ROOT / "export" / "build_engines.py")], cwd=tmp_path, env=env,  # noqa: E731
                                 capture_output=True, text=True, timeout=600)  # fmt: skip
    first = run()
    assert first.returncode == 0, first.stderr
    engine_dir = tmp_path / "engines" / "shapes-contextdiff"
    assert read_manifest(engine_dir) is not None
    assert "component" in first.stdout and first.stdout.count(" built") == 3
    assert "TensorRT" in first.stderr or "TensorRT" in first.stdout  # says in one line what it did without TensorRT
    for component in ("text_encoder", "unet", "adapter"):  # progress per component, and nothing else from the libraries
        assert f"{component}: exporting to ONNX" in first.stderr and f"{component}: built" in first.stderr
    noise = [line for line in first.stderr.splitlines() if any(w in line for w in ("Warning", "torchvision", "Traceback", "LeafSpec", "[torch.onnx]"))]
    assert noise == [], noise
    second = run()
    assert second.returncode == 0 and second.stdout.count(" cached") == 3


@pytest.fixture()
def broken_model(pixel_model_dir, tmp_path):
    root = Path(shutil.copytree(pixel_model_dir, tmp_path / "broken"))
    shutil.rmtree(root / "unet")
    return root


@pytest.fixture()
def pickle_model(pixel_model_dir, tmp_path):
    root = Path(shutil.copytree(pixel_model_dir, tmp_path / "pickled"))
    (root / "unet" / "diffusion_pytorch_model.safetensors").rename(root / "unet" / "diffusion_pytorch_model.bin")
    return root


BAD = [
    (lambda d, b, t: ["--model", str(t / "nope")], "not found"),
    (lambda d, b, t: ["--model", str(b)], "unet"),
    (lambda d, b, t: ["--model", str(t / "pickled"), "--out", str(t / "e")], "pickle weights are never loaded"),
    (lambda d, b, t: ["--model", str(d), "--out", str(t / "file.txt" / "sub")], "not writable"),
    (lambda d, b, t: ["--model", str(d), "--out", str(t / "e"), "--height", "33"], "--height"),
    (lambda d, b, t: ["--model", str(d), "--out", str(t / "e"), "--width", "100000"], "--width"),
    (lambda d, b, t: ["--model", str(d), "--out", str(t / "e"), "--batch", "0"], "--batch"),
    (lambda d, b, t: ["--model", str(d), "--precision", "fp8"], "--precision"),
    (lambda d, b, t: ["--model", str(d), "--backend", "cuda"], "--backend"),
]  # fmt: skip


@pytest.mark.parametrize("args,needle", BAD, ids=["missing-dir", "missing-unet", "pickle", "unwritable", "height", "width", "batch", "precision", "backend"])
def test_bad_input_is_one_clear_line(pixel_model_dir, broken_model, pickle_model, tmp_path, capsys, args, needle):
    (tmp_path / "file.txt").write_text("a file, not a directory")
    with pytest.raises(SystemExit) if needle in ("--precision", "--backend") else _no_exit() as exit_info:
        code = main(args(pixel_model_dir, broken_model, tmp_path))
    code = exit_info.value.code if needle in ("--precision", "--backend") else code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and needle in err[0], err


def test_tensorrt_requested_without_it(pixel_model_dir, tmp_path, capsys):
    from export.tensorrt_build import tensorrt_status

    if tensorrt_status()[0] is not None:
        pytest.skip("TensorRT is usable here")
    assert main(["--model", str(pixel_model_dir), "--out", str(tmp_path / "e"), "--backend", "tensorrt"]) == 2
    assert "--backend tensorrt" in capsys.readouterr().err


def test_a_failure_inside_a_component_is_one_line_naming_it(pixel_model_dir, tmp_path, capsys, monkeypatch):
    import export.build

    def explode(*args, **kwargs):
        raise RuntimeError("the exporter gave up\nwith a long second line")

    monkeypatch.setattr(export.build, "export_onnx", explode)
    assert main(["--model", str(pixel_model_dir), "--out", str(tmp_path / "e"), "--onnx-cache", ""]) == 2  # no cache: it must export
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: text_encoder: RuntimeError: the exporter gave up (run with --verbose for the traceback)"
    assert not any("Traceback" in line for line in err) and read_manifest(tmp_path / "e") is None
    assert not [p for p in (tmp_path / "e").iterdir() if p.name != ".build.lock"]  # nothing half-written left behind


def test_onnx_runtime_graphs_are_refused_for_tensorrt():
    from export.build import _resolve_flavour
    from export.onnx_export import Flavour
    from runtime.errors import InvalidArgumentError
    from runtime.options import BuildBackend

    assert _resolve_flavour(None, BuildBackend.TENSORRT) is Flavour.STANDARD and _resolve_flavour(None, BuildBackend.ONNXRUNTIME) is Flavour.ONNXRUNTIME
    with pytest.raises(InvalidArgumentError, match="--onnx-flavour.*TensorRT cannot parse"):
        _resolve_flavour(Flavour.ONNXRUNTIME, BuildBackend.TENSORRT)


class _no_exit:
    value = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

"""Engine directory: manifest, content-hash cache, atomic writes under SIGKILL, the build lock, fp16 fallback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
import torch

import export.build as build_module
from contextdiff_ref.models.model_dir import load_model_dir, save_model_dir
from export.artifacts import MANIFEST, BuildError, BuildLock, read_manifest
from export.build import Backend, BuildOptions, build_engine_dir
from export.onnx_export import Precision
from tests.parity import assert_complete

ROOT = Path(__file__).resolve().parents[2]
ORT = BuildOptions(backend=Backend.ONNXRUNTIME)


@pytest.fixture()
def model_copy(pixel_model_dir, tmp_path) -> Path:
    return Path(shutil.copytree(pixel_model_dir, tmp_path / "model"))


def test_manifest_contents(latent_fp32_dir):
    manifest = assert_complete(latent_fp32_dir)
    assert manifest["format_version"] == 1 and manifest["package_version"]
    assert len(manifest["model"]["hash"]) == 64 and manifest["build"]["backend"] == "onnxruntime"
    assert set(manifest["components"]) == {"text_encoder", "unet", "adapter", "vae_decoder"}
    unet = manifest["components"]["unet"]
    assert unet["precision"] == "fp32" and unet["onnx"]["opset"] >= 17
    assert unet["profile"] == {"min": [1, 8, 8], "opt": [6, 16, 16], "max": [6, 32, 32]}  # 3 images x guidance; dynamic size
    assert [t["name"] for t in unet["io"]["inputs"]] == ["sample", "timestep", "encoder_hidden_states"]
    assert json.loads((latent_fp32_dir / "scheduler.json").read_text())["steps_offset"] == 1


def test_second_build_is_cached_and_changed_weights_rebuild_one_component(model_copy, tmp_path):
    out = tmp_path / "engines"
    first = build_engine_dir(model_copy, out, ORT)
    assert not any(r.cached for r in first)
    manifest = assert_complete(out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    second = build_engine_dir(model_copy, out, ORT)
    assert all(r.cached for r in second)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix == ".onnx"} == {k: v for k, v in mtimes.items() if k.endswith(".onnx")}

    components = load_model_dir(model_copy)  # new adapter weights, everything else identical
    with torch.no_grad():
        components.adapter.proj_out.weight.mul_(2.0)
    save_model_dir(components, model_copy)
    third = {r.component: r.cached for r in build_engine_dir(model_copy, out, ORT)}
    assert third == {"text_encoder": True, "unet": True, "adapter": False}
    updated = assert_complete(out)
    assert updated["model"]["hash"] != manifest["model"]["hash"]
    assert updated["components"]["adapter"]["onnx"]["file"] != manifest["components"]["adapter"]["onnx"]["file"]
    assert not (out / manifest["components"]["adapter"]["onnx"]["file"]).exists()  # the stale artifact is gone
    assert not any(r.cached for r in build_engine_dir(model_copy, out, BuildOptions(backend=Backend.ONNXRUNTIME, force=True)))


def _kill_build_midway(model: Path, out: Path, env: dict) -> None:
    """Start the CLI, SIGKILL it once its first artifact has landed (i.e. in the middle of the build)."""
    proc = subprocess.Popen([sys.executable, "export/build_engines.py", "--model", str(model), "--out", str(out), "--backend", "onnxruntime"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and any(p.name.startswith("text_encoder.") for p in out.iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the build finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_killed_build_is_never_accepted_and_rerun_completes(model_copy, tmp_path):
    out = tmp_path / "engines"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    _kill_build_midway(model_copy, out, env)
    assert read_manifest(out) is None  # nothing a runtime or a later build would take as complete
    build_engine_dir(model_copy, out, ORT)
    before = assert_complete(out)
    assert not any(p.name.startswith(".tmp-") for p in out.iterdir())

    components = load_model_dir(model_copy)  # kill a rebuild: the previous manifest must stay valid
    with torch.no_grad():
        for module in (components.text_encoder, components.unet, components.adapter):
            next(module.parameters()).add_(0.01)
    save_model_dir(components, model_copy)
    _kill_build_midway(model_copy, out, env)
    assert assert_complete(out) == before
    build_engine_dir(model_copy, out, ORT)
    assert assert_complete(out)["model"]["hash"] != before["model"]["hash"]


def test_concurrent_build_is_refused(model_copy, tmp_path):
    out = tmp_path / "engines"
    out.mkdir()
    with BuildLock(out):
        with pytest.raises(BuildError, match="another build"):
            build_engine_dir(model_copy, out, ORT)
    with BuildLock(out):  # released afterwards
        pass
    assert read_manifest(out) is None  # the refused build wrote nothing


def test_fp16_that_misses_the_tolerance_falls_back_to_fp32(model_copy, tmp_path, monkeypatch):
    monkeypatch.setattr(build_module, "FP16_TOLERANCE", 0.0)
    results = build_engine_dir(model_copy, tmp_path / "engines", BuildOptions(backend=Backend.ONNXRUNTIME, precision=Precision.FP16))
    assert all(r.precision == "fp32" and "kept fp32" in r.note for r in results)
    manifest = assert_complete(tmp_path / "engines")
    graph = onnx.load(str(tmp_path / "engines" / manifest["components"]["unet"]["onnx"]["file"]))
    assert all(t.data_type != onnx.TensorProto.FLOAT16 for t in graph.graph.initializer)


def test_tensorrt_is_a_clear_error_when_absent(model_copy, tmp_path):
    version, reason = build_module.tensorrt_status()
    if version is not None:
        pytest.skip("TensorRT is usable here; this test is about machines without it")
    with pytest.raises(BuildError, match="--backend tensorrt"):
        build_engine_dir(model_copy, tmp_path / "engines", BuildOptions(backend=Backend.TENSORRT))
    assert not (tmp_path / "engines" / MANIFEST).exists()


def test_foreign_files_in_the_output_directory_are_left_alone(model_copy, tmp_path):
    out = tmp_path / "shared-dir"
    out.mkdir()
    foreign = [out / "notes.json", out / "other.onnx", out / "unet.fp32.plan"]
    for f in foreign:
        f.write_text("mine")
    (out / ".tmp-leftover").write_text("from a killed build")
    build_engine_dir(model_copy, out, ORT)
    assert_complete(out)
    assert all(f.read_text() == "mine" for f in foreign)
    assert not (out / ".tmp-leftover").exists()


@pytest.fixture()
def small_disk(tmp_path):
    """mount(size) -> a fresh tmpfs of ``size`` bytes (unmounted after the test); skips where mounting is not allowed."""
    mounted = []

    def mount(size: int) -> Path:
        path = tmp_path / f"disk{len(mounted)}"
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size // 1024 + 1}k", "tmpfs", str(path)], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"mounting a small tmpfs to fill needs root with CAP_SYS_ADMIN: {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", str(path)], check=False)


def test_a_full_disk_fails_cleanly_and_keeps_the_previous_build(model_copy, pixel_fp32_dir, small_disk):
    from runtime.generator import Generator

    sizes = {k: v["onnx"]["bytes"] for k, v in read_manifest(pixel_fp32_dir)["components"].items()}  # the same model's artifacts
    out = small_disk(sizes["text_encoder"] + sizes["unet"] // 2) / "engines"  # the disk fills while the UNet is written
    with pytest.raises(BuildError, match=r"^unet: the disk of .* is full: nothing half-written was kept"):
        build_engine_dir(model_copy, out, ORT)
    assert read_manifest(out) is None and not any(p.name.startswith(".tmp-") for p in out.iterdir())

    out = small_disk(sum(sizes.values()) + sizes["unet"] // 2) / "engines"  # one build fits, a second UNet does not
    build_engine_dir(model_copy, out, ORT)
    before = assert_complete(out)
    components = load_model_dir(model_copy)
    with torch.no_grad():
        next(components.unet.parameters()).add_(0.01)
    save_model_dir(components, model_copy)
    with pytest.raises(BuildError, match=r"^unet: the disk of .* is full"):
        build_engine_dir(model_copy, out, ORT)
    assert assert_complete(out) == before and not any(p.name.startswith(".tmp-") for p in out.iterdir())
    assert Generator.from_dir(out).backend == "onnxruntime-cpu"  # the previous build is still usable

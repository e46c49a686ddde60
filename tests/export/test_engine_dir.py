"""Engine directory: manifest, content-hash cache, atomic writes under SIGKILL, the build lock, fp16 fallback."""

from __future__ import annotations

import errno
import json
import logging
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
from export.build import BuildOptions, build_engine_dir
from runtime.options import BuildBackend, Precision
from tests.parity import assert_complete

ROOT = Path(__file__).resolve().parents[2]
ORT = BuildOptions(backend=BuildBackend.ONNXRUNTIME)  # with the session's ONNX cache (tests/conftest.py)
FRESH = BuildOptions(backend=BuildBackend.ONNXRUNTIME, onnx_cache=None)  # exports every artifact itself


@pytest.fixture()
def model_copy(pixel_model_dir, tmp_path) -> Path:
    return Path(shutil.copytree(pixel_model_dir, tmp_path / "model"))


@pytest.mark.slow
def test_manifest_contents(latent_fp32_dir):
    manifest = assert_complete(latent_fp32_dir)
    assert manifest["format_version"] == 1 and manifest["package_version"]
    assert len(manifest["model"]["hash"]) == 64 and manifest["build"]["backend"] == "onnxruntime"
    assert set(manifest["components"]) == {"text_encoder", "unet", "adapter", "vae_decoder", "vae_encoder"}  # the encoder: image edits
    unet = manifest["components"]["unet"]
    assert unet["precision"] == "fp32" and unet["onnx"]["opset"] >= 17
    assert unet["profile"] == {"min": [1, 8, 8], "opt": [6, 16, 16], "max": [6, 32, 32]}  # 3 images x guidance; dynamic size
    assert [t["name"] for t in unet["io"]["inputs"]] == ["sample", "timestep", "encoder_hidden_states"]
    assert json.loads((latent_fp32_dir / "scheduler.json").read_text())["steps_offset"] == 1


@pytest.fixture(scope="module")
def first_build(pixel_model_dir, tmp_path_factory):
    """A first build into an empty ONNX cache of its own (every artifact exported), made once for the tests below: each
    takes a copy (``from_first_build``) of the model, the engine directory and the cache, and its results."""
    root = tmp_path_factory.mktemp("first-build")
    model = Path(shutil.copytree(pixel_model_dir, root / "model"))
    results = build_engine_dir(model, root / "engines", BuildOptions(backend=BuildBackend.ONNXRUNTIME, onnx_cache=root / "cache"))
    return root, results


def from_first_build(first_build, tmp_path) -> tuple[Path, Path, Path, list]:
    """(model, engine directory, ONNX cache, the first build's results): a copy of ``first_build`` in ``tmp_path``."""
    root, results = first_build
    for name in ("model", "engines", "cache"):
        shutil.copytree(root / name, tmp_path / name)
    return tmp_path / "model", tmp_path / "engines", tmp_path / "cache", results


@pytest.mark.slow
def test_second_build_is_cached_and_changed_weights_rebuild_one_component(first_build, tmp_path):
    model_copy, out, cache, first = from_first_build(first_build, tmp_path)
    assert not any(r.cached for r in first)
    manifest = assert_complete(out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    second = build_engine_dir(model_copy, out, FRESH)
    assert all(r.cached for r in second)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix == ".onnx"} == {k: v for k, v in mtimes.items() if k.endswith(".onnx")}

    components = load_model_dir(model_copy)  # new adapter weights, everything else identical
    with torch.no_grad():
        components.adapter.proj_out.weight.mul_(2.0)
    save_model_dir(components, model_copy)
    third = {r.component: r.cached for r in build_engine_dir(model_copy, out, FRESH)}
    assert third == {"text_encoder": True, "unet": True, "adapter": False}
    updated = assert_complete(out)
    assert updated["model"]["hash"] != manifest["model"]["hash"]
    assert updated["components"]["adapter"]["onnx"]["file"] != manifest["components"]["adapter"]["onnx"]["file"]
    assert not (out / manifest["components"]["adapter"]["onnx"]["file"]).exists()  # the stale artifact is gone
    forced = BuildOptions(backend=BuildBackend.ONNXRUNTIME, force=True, onnx_cache=cache)
    assert not any(r.cached for r in build_engine_dir(model_copy, out, forced))  # nor from the cache, which holds two of them


@pytest.mark.slow
def test_onnx_cache_is_shared_across_engine_directories_and_checked(first_build, tmp_path, caplog):
    """--onnx-cache: a second engine directory of the same model (another batch profile) copies every artifact from
    the cache, bit for bit; a cache file that does not match its record is ignored and rebuilt (--force ignoring the
    cache: the test above); an fp16 build converts the cache's fp32 graphs instead of exporting again."""
    model_copy, _, cache, first = from_first_build(first_build, tmp_path)
    (tmp_path / "engines").rename(tmp_path / "a")
    assert not any(r.cached for r in first) and len(list(cache.glob("*.onnx.json"))) == 3
    second = build_engine_dir(model_copy, tmp_path / "b", BuildOptions(backend=BuildBackend.ONNXRUNTIME, onnx_cache=cache, max_images=2))
    assert all(r.cached for r in second)
    a, b = assert_complete(tmp_path / "a"), assert_complete(tmp_path / "b")
    assert {c: e["onnx"] for c, e in a["components"].items()} == {c: e["onnx"] for c, e in b["components"].items()}
    assert a["components"]["unet"]["profile"] != b["components"]["unet"]["profile"]
    unet_file = a["components"]["unet"]["onnx"]["file"]
    with open(cache / unet_file, "r+b") as f:  # damage the cached UNet
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    third = {r.component: r.cached for r in build_engine_dir(model_copy, tmp_path / "c", BuildOptions(backend=BuildBackend.ONNXRUNTIME, onnx_cache=cache))}
    assert third == {"text_encoder": True, "unet": False, "adapter": True}
    assert assert_complete(tmp_path / "c")["components"]["unet"]["onnx"]["sha256"] == a["components"]["unet"]["onnx"]["sha256"]  # the same export
    with caplog.at_level(logging.INFO, logger="export.build"):
        half = build_engine_dir(model_copy, tmp_path / "h", BuildOptions(backend=BuildBackend.ONNXRUNTIME, onnx_cache=cache, precision=Precision.FP16))
    assert all(r.precision == "fp16" and "fp16 rel. error" in r.note for r in half)
    assert caplog.text.count("converting the ONNX cache's fp32 graph") == 3 and "exporting to ONNX" not in caplog.text


def _kill_build_midway(model: Path, out: Path, env: dict) -> Path:
    """Start the CLI, SIGKILL it once its first new artifact has landed (i.e. in the middle of the build, not while it
    starts up beside a previous build's files); returns that artifact."""
    existing = set(out.iterdir()) if out.is_dir() else set()
    proc = subprocess.Popen([sys.executable, "export/build_engines.py", "--model", str(model), "--out", str(out), "--backend", "onnxruntime"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline, landed = time.monotonic() + 240, []
    while time.monotonic() < deadline and proc.poll() is None and not landed:
        landed = [p for p in out.iterdir() if p.name.startswith("text_encoder.") and p not in existing] if out.is_dir() else []
        time.sleep(0.05)
    assert proc.poll() is None, "the build finished (or failed) before it could be killed"
    assert landed, "no new text encoder artifact within 240 s"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return landed[0]


@pytest.mark.slow
def test_killed_build_is_never_accepted_and_rerun_completes(model_copy, tmp_path):
    out = tmp_path / "engines"
    env = {k: v for k, v in os.environ.items() if k != "CONTEXTDIFF_ONNX_CACHE"} | {"PYTHONPATH": str(ROOT)}  # it must export
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
    landed = _kill_build_midway(model_copy, out, env)  # the rebuild's new text encoder artifact is in place ...
    assert assert_complete(out) == before  # ... and the previous manifest, which does not name it, still stands
    assert landed.name not in json.dumps(before)
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


@pytest.mark.slow
def test_fp16_that_misses_the_tolerance_falls_back_to_fp32(first_build, tmp_path, monkeypatch):
    # a tolerance of 0 makes every fp16 conversion miss, so the fallback path runs for every component; the real
    # tolerance is held on the shipped models' fp16 builds (tests/runtime/test_generator.py)
    monkeypatch.setattr(build_module, "FP16_TOLERANCE", 0.0)
    # not the session's ONNX cache (an fp16 graph another test converted at the real tolerance would be taken from it,
    # unchecked here) but a copy of the first build's, which holds the fp32 graphs only: each is converted here
    model_copy, _, cache, _ = from_first_build(first_build, tmp_path)
    assert not list(cache.glob("*fp16*")) and len(list(cache.glob("*.onnx.json"))) == 3
    options = BuildOptions(backend=BuildBackend.ONNXRUNTIME, precision=Precision.FP16, onnx_cache=cache)
    results = build_engine_dir(model_copy, tmp_path / "fp16-engines", options)
    assert all(r.precision == "fp32" and "kept fp32" in r.note for r in results)
    manifest = assert_complete(tmp_path / "fp16-engines")
    graph = onnx.load(str(tmp_path / "fp16-engines" / manifest["components"]["unet"]["onnx"]["file"]))
    assert all(t.data_type != onnx.TensorProto.FLOAT16 for t in graph.graph.initializer)


def test_tensorrt_is_a_clear_error_when_absent(model_copy, tmp_path):
    version, reason = build_module.tensorrt_status()
    if version is not None:
        pytest.skip("TensorRT is usable here; this test is about machines without it")
    with pytest.raises(BuildError, match="--backend tensorrt"):
        build_engine_dir(model_copy, tmp_path / "engines", BuildOptions(backend=BuildBackend.TENSORRT))
    assert not (tmp_path / "engines" / MANIFEST).exists()


@pytest.mark.slow
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
def small_disk(tmp_path, monkeypatch):
    """mount(size) -> a fresh tmpfs of ``size`` bytes (unmounted after the test). Where mounting is not allowed (not
    root), a simulated one: every ONNX export into a folder under it that leaves more than ``size`` bytes there fails
    with ENOSPC, as the write on a full disk would."""
    mounted, simulated = [], {}

    def mount(size: int) -> Path:
        path = tmp_path / f"disk{len(mounted) + len(simulated)}"
        path.mkdir()
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size // 1024 + 1}k", "tmpfs", str(path)], capture_output=True, text=True)
        except FileNotFoundError:  # no mount command
            done = None
        if done is not None and done.returncode == 0:
            mounted.append(path)
        else:
            simulated[path] = size
        return path

    real_export = build_module.export_onnx

    def export_onnx(*args, **kwargs):
        files = real_export(*args, **kwargs)
        for disk, size in simulated.items():
            if files[0].is_relative_to(disk) and sum(p.stat().st_size for p in disk.rglob("*") if p.is_file()) > size:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(files[0]))
        return files

    monkeypatch.setattr(build_module, "export_onnx", export_onnx)
    mount.simulated = simulated  # a real disk's builds may copy from the ONNX cache; a simulated one's must export
    yield mount
    for path in mounted:
        subprocess.run(["umount", str(path)], check=False)


@pytest.mark.slow
def test_a_full_disk_fails_cleanly_and_keeps_the_previous_build(model_copy, pixel_fp32_dir, small_disk):
    from runtime.generator import Generator

    sizes = {k: v["onnx"]["bytes"] for k, v in read_manifest(pixel_fp32_dir)["components"].items()}  # the same model's artifacts
    out = small_disk(sizes["text_encoder"] + sizes["unet"] // 2) / "engines"  # the disk fills while the UNet is written
    options = FRESH if out.parent in small_disk.simulated else ORT
    with pytest.raises(BuildError, match=r"^unet: the disk of .* is full: nothing half-written was kept"):
        build_engine_dir(model_copy, out, options)
    assert read_manifest(out) is None and not any(p.name.startswith(".tmp-") for p in out.iterdir())

    out = small_disk(sum(sizes.values()) + sizes["unet"] // 2) / "engines"  # one build fits, a second UNet does not
    build_engine_dir(model_copy, out, options)
    before = assert_complete(out)
    components = load_model_dir(model_copy)
    with torch.no_grad():
        next(components.unet.parameters()).add_(0.01)
    save_model_dir(components, model_copy)
    with pytest.raises(BuildError, match=r"^unet: the disk of .* is full"):
        build_engine_dir(model_copy, out, options)
    assert assert_complete(out) == before and not any(p.name.startswith(".tmp-") for p in out.iterdir())
    assert Generator.from_dir(out).backend == "onnxruntime-cpu"  # the previous build is still usable

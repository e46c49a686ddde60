"""The engine manifest's one typed definition (runtime.manifest.Manifest): what the build writes is what it parses
back, byte for byte; manifests of older builds (fields added since missing) still load."""

from __future__ import annotations

import json

import pytest

from export.artifacts import MANIFEST, read_manifest, remove_stale
from runtime.manifest import EngineDirectoryError, Manifest, load_manifest
from runtime.options import OpenVINOPrecision
from runtime.specs import Component


def test_a_built_manifest_round_trips_through_the_typed_definition(pixel_fp32_dir):
    text = (pixel_fp32_dir / MANIFEST).read_text(encoding="utf-8")
    parsed = Manifest.from_json(json.loads(text))
    assert json.dumps(parsed.to_json(), indent=2) + "\n" == text  # same keys, same order, same values
    assert parsed.model.video is None and parsed.build.backend == "onnxruntime"
    assert {f.file for f in parsed.files()} <= {p.name for p in pixel_fp32_dir.iterdir()}
    assert load_manifest(pixel_fp32_dir).record == parsed


def test_an_older_manifest_without_the_later_fields_loads(pixel_fp32_dir, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    data = read_manifest(pixel_fp32_dir)
    for f in Manifest.from_json(data).files():
        (old / f.file).symlink_to(pixel_fp32_dir / f.file)
    del data["model"]["contextual_guidance"], data["build"]["openvino_precision"]
    for entry in data["components"].values():
        del entry["note"], entry["source_key"], entry["io"]
    (old / MANIFEST).write_text(json.dumps(data))
    loaded = load_manifest(old)
    assert loaded.openvino_precision is OpenVINOPrecision.F32 and loaded.record.model.contextual_guidance is None
    assert set(loaded.components) == {Component.TEXT_ENCODER, Component.UNET, Component.ADAPTER}


def test_a_malformed_video_record_is_the_directory_error(pixel_fp32_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    data = read_manifest(pixel_fp32_dir) | {}
    data["model"] = data["model"] | {"video": {"num_frames": 1}}
    (bad / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(EngineDirectoryError, match="num_frames=1 is not an integer >= 2"):
        load_manifest(bad, verify=False)


def test_stale_artifacts_of_every_component_are_removed(tmp_path):
    names = [f"{c.value}.fp16.0123456789abcdef.onnx" for c in Component] + ["vae_encoder.fp32.0123456789abcdef.onnx.data", "notes.onnx"]
    for name in names:
        (tmp_path / name).write_text("x")
    remove_stale(tmp_path, keep=set())
    assert [p.name for p in tmp_path.iterdir()] == ["notes.onnx"]

"""The TensorRT runner: its graph bookkeeping (plain Python, everywhere), and inside runtime.Generator against ONNX
Runtime, which runs only where TensorRT, CuPy and a CUDA GPU work; elsewhere that test skips with the reason."""

from __future__ import annotations

import importlib.util

import pytest

from export.tensorrt_build import tensorrt_status

TRT_VERSION, REASON = tensorrt_status()
MISSING = REASON or ("" if importlib.util.find_spec("cupy") else "CuPy is not installed")


@pytest.mark.skipif(bool(MISSING), reason=MISSING or "TensorRT unavailable")
def test_tensorrt_generator_matches_onnxruntime(latent_model_dir, tmp_path):
    from export.build import BuildOptions, build_engine_dir
    from runtime.generator import Generator
    from runtime.metrics import psnr
    from runtime.options import BuildBackend, Precision

    out = tmp_path / "trt"
    build_engine_dir(latent_model_dir, out, BuildOptions(backend=BuildBackend.TENSORRT, precision=Precision.FP32, max_images=1))
    kwargs = dict(num_inference_steps=10, seed=0, progress=False)
    trt_images = Generator.from_dir(out, backend="tensorrt")("a red circle", **kwargs).images
    ort_images = Generator.from_dir(out, backend="onnxruntime-cpu")("a red circle", **kwargs).images
    assert psnr(trt_images, ort_images) >= 35.0


def test_tensorrt_graph_bookkeeping():
    """When the TensorRT runner rebinds, runs, captures or replays (runtime/backends/tensorrt.py; the TensorRT calls
    themselves need a GPU)."""
    from runtime.backends.tensorrt import GraphBook

    book = GraphBook(max_graphs=2)
    a, b, c = ((2, 4, 8, 8),), ((1, 4, 8, 8),), ((2, 4, 16, 16),)
    seen = []
    for key in [a, a, a, b, a, b, b, c, c, c]:
        action = book.next(key)
        seen.append((action.rebind, action.how))
        if action.how == "capture":
            book.captured(key, f"graph{key}")
    assert seen == [
        (True, "run"),  # a new shape: bind, and the one plain enqueue TensorRT wants before a capture
        (False, "capture"),
        (False, "replay"),
        (True, "run"),  # b: new shape
        (True, "replay"),  # back to a: shapes set again, its graph replayed
        (True, "run"),  # b was never run right before itself: another plain enqueue after the shape change
        (False, "capture"),
        (True, "run"),  # c: new
        (False, "run"),  # the graph limit (2) is reached: c stays uncaptured
        (False, "run"),
    ]
    book.clear()  # a closed runner: nothing bound, nothing captured
    action = book.next(a)
    assert (action.rebind, action.how) == (True, "run") and book.graphs == {}
    plain = GraphBook(max_graphs=0)  # cuda_graphs=False
    assert [(x.rebind, x.how) for x in (plain.next(a), plain.next(a))] == [(True, "run"), (False, "run")]

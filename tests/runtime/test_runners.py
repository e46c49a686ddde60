"""The runners' GPU code paths that can run on the CPU: ONNX Runtime I/O binding (the CUDA runner's code, binding
NumPy arrays instead of CuPy ones), the Generator's device handling on a CuPy-like array module, the CUDA
provider check, and the CUDA driver query the exporter and the generator
share. What only a GPU can run is run by ``python -m benchmarks.gpu_check``."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from runtime import cuda_driver
from runtime.errors import InvalidArgumentError
from runtime.generator import Generator
from runtime.manifest import load_manifest
from runtime.runners import OnnxRuntimeRunner
from runtime.specs import SPECS


def _runners(engine_dir, **options):
    manifest = load_manifest(engine_dir)
    return manifest, {c: OnnxRuntimeRunner(SPECS[c], a.onnx, model=manifest.dims, **options) for c, a in manifest.components.items()}


def test_io_binding_gives_what_run_gives_at_every_batch(latent_fp32_dir):
    manifest, plain = _runners(latent_fp32_dir)
    _, bound = _runners(latent_fp32_dir, io_binding=True)
    rng = np.random.default_rng(0)
    for component, artifacts in manifest.components.items():
        lo, _, hi = artifacts.profile.min, artifacts.profile.opt, artifacts.profile.max
        with plain[component] as a, bound[component] as b:
            for batch in sorted({lo[0], hi[0]}):
                feed = SPECS[component].sample_inputs(manifest.dims, batch, hi[1], hi[2], rng)
                feed = {k: v.T.copy().T for k, v in feed.items()}  # Fortran-ordered: the runner must make them contiguous
                first = b.infer(feed)
                expected = a.infer(feed)
                again = b.infer(feed)
                for name, value in expected.items():
                    assert first[name].shape == value.shape and first[name].dtype == value.dtype, (component, batch)
                    np.testing.assert_array_equal(first[name], value)
                    assert first[name] is not again[name] and not np.shares_memory(first[name], again[name])  # fresh outputs per call


def test_generator_on_io_bound_runners_matches_plain_runners(latent_fp32_dir):
    manifest, plain = _runners(latent_fp32_dir)
    _, bound = _runners(latent_fp32_dir, io_binding=True)
    call = dict(prompt=["a red circle at the top left", "a blue square"], num_inference_steps=4, guidance_scale=3.0, eta=0.5, seed=3,
                progress=False)  # fmt: skip
    expected = Generator(manifest, plain, "onnxruntime-cpu")(**call).images
    got = Generator(manifest, bound, "onnxruntime-cpu")(**call).images
    np.testing.assert_array_equal(got, expected)


class _DeviceArrays:
    """An array module like CuPy as the Generator uses it — NumPy's functions, a ``cuda.Device`` context and
    ``asnumpy`` — that records which device each thread made current, and where the host copy happens."""

    def __init__(self) -> None:
        import threading

        self.entered: list[tuple[int, int]] = []  # (device, thread id)
        self.host_copies = 0
        arrays = self

        class Device:
            def __init__(self, index: int) -> None:
                self.index = index

            def __enter__(self):
                arrays.entered.append((self.index, threading.get_ident()))

            def __exit__(self, *exc):
                return False

        self.cuda = type("cuda", (), {"Device": Device})

    def asnumpy(self, value):
        self.host_copies += 1
        return np.asarray(value)

    def __getattr__(self, name):
        return getattr(np, name)


def test_generator_on_a_device_array_module_enters_its_device_on_every_thread(latent_fp32_dir):
    import threading

    manifest, plain = _runners(latent_fp32_dir)
    call = dict(prompt="a red circle at the top left", num_inference_steps=3, guidance_scale=3.0, seed=1, progress=False)
    expected = Generator(manifest, plain, "onnxruntime-cpu")(**call).images
    manifest, runners = _runners(latent_fp32_dir)
    xp = _DeviceArrays()
    gen = Generator(manifest, runners, "test-device", xp=xp, device_id=3)
    assert [d for d, _ in xp.entered] == [3]  # engines loaded on the Generator's device
    got = {}
    worker = threading.Thread(target=lambda: got.setdefault("images", gen(**call).images))
    worker.start()
    worker.join()
    np.testing.assert_array_equal(got["images"], expected)
    assert xp.entered[1] == (3, worker.ident)  # the calling thread made the device current itself
    assert xp.host_copies == 1  # one device-to-host copy per call, at decode


def test_io_binding_needs_the_model_dims(latent_fp32_dir):
    manifest = load_manifest(latent_fp32_dir)
    artifacts = next(iter(manifest.components.values()))
    with pytest.raises(InvalidArgumentError, match="model"):
        OnnxRuntimeRunner(SPECS[artifacts.component], artifacts.onnx, io_binding=True)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this onnxruntime has the CUDA provider")
def test_a_cuda_runner_refuses_onnx_runtimes_silent_cpu_fallback(latent_fp32_dir):
    manifest, runners = _runners(latent_fp32_dir, cuda=True)
    runner = next(iter(runners.values()))
    with pytest.raises(RuntimeError, match="could not load its CUDA execution provider.*onnxruntime-gpu"):
        runner.activate()
    assert not runner.active and runner.session is None


def test_the_cuda_driver_answers_without_torch():
    count = cuda_driver.device_count()
    assert isinstance(count, int) and count >= 0
    if count == 0:
        for ask in (cuda_driver.gpu_info, cuda_driver.memory_in_use):
            with pytest.raises(cuda_driver.CudaUnavailable, match="CUDA"):
                ask(0)
    else:
        info = cuda_driver.gpu_info(0)
        assert info.name and info.total_memory_bytes > 2**30
        assert info.compute_capability.count(".") == 1 and all(part.isdigit() for part in info.compute_capability.split("."))
        assert 0 < cuda_driver.memory_in_use(0) <= info.total_memory_bytes
        with pytest.raises(cuda_driver.CudaUnavailable, match="does not exist"):
            cuda_driver.gpu_info(count)


def test_tensorrt_graph_bookkeeping():
    """When the TensorRT runner rebinds, runs, captures or replays (runtime/tensorrt_runner.py; the TensorRT calls
    themselves need a GPU)."""
    from runtime.tensorrt_runner import GraphBook

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

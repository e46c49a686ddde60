"""The ONNX Runtime runner's GPU code paths that can run on the CPU: I/O binding (the CUDA runner's code, binding
NumPy arrays instead of CuPy ones), the Generator's device handling on a CuPy-like array module and the CUDA
provider check. What only a GPU can run is run by ``python -m benchmarks.gpu_check``."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from runtime.backends.ort import OnnxRuntimeRunner
from runtime.errors import InvalidArgumentError
from runtime.generator import Generator
from runtime.manifest import load_manifest
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

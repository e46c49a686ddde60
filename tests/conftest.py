"""Shared fixtures: tiny seeded model directories, built once per test session (a few seconds)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# Under pytest-xdist each worker computes on one thread (torch's OpenMP pool, OpenVINO's and ONNX Runtime's threads in
# the tests' subprocesses read these before their first import): two workers on two cores, not four threads
# contending, where a pool that waits on a descheduled thread makes a 3-s test take 70.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import pytest

from tests.skip_policy import pytest_collectreport, pytest_runtest_logreport, pytest_sessionfinish  # noqa: F401  (the hooks)

_ONNX_CACHE = "CONTEXTDIFF_ONNX_CACHE"


def pytest_configure(config):
    """One ONNX cache per session (export.build's --onnx-cache): every build of the same component of the same model
    with the same precision and flavour exports once; the tests of the cache itself, and of builds that must export,
    pass their own (or none). Always a fresh folder, never one set outside, so that every export the suite checks
    runs in it once. Under pytest-xdist the controller makes it and its workers share it (the cache's writes are
    atomic, made for concurrent builds)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ[_ONNX_CACHE] = tempfile.mkdtemp(prefix="contextdiff-onnx-cache-")
    else:
        import torch

        torch.set_num_threads(1)


SLOW_WEIGHT = 20.0  # a slow test's rough seconds (engine builds, trained models), against about 0.5 for the others


def pytest_collection_modifyitems(session, config, items):
    """Modules in order of their rough cost, costliest first, each module's tests kept together in their own order.
    Under pytest-xdist's ``--dist loadscope`` (pyproject.toml) a module runs whole on one worker — its module fixtures
    built once — and the workers take modules in this order, so the run ends on cheap modules instead of one worker
    finishing a long build while the other waits. The cost is counted from the ``slow`` markers, nothing measured."""
    cost: dict[str, float] = {}  # module -> rough seconds; dicts keep the modules' first-seen (collection) order
    for item in items:
        module = item.nodeid.split("::")[0]
        cost[module] = cost.get(module, 0.0) + (SLOW_WEIGHT if item.get_closest_marker("slow") else 0.5)
    rank = {module: i for i, module in enumerate(sorted(cost, key=lambda m: -cost[m]))}  # stable: ties keep collection order
    items.sort(key=lambda item: rank[item.nodeid.split("::")[0]])


def pytest_unconfigure(config):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        shutil.rmtree(os.environ.pop(_ONNX_CACHE, ""), ignore_errors=True)


@pytest.fixture(scope="session")
def pixel_model_dir(tmp_path_factory) -> Path:
    from contextdiff_ref.models.tiny import write_tiny_model_dir

    return write_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny-pixel", latent=False, seed=0)


@pytest.fixture(scope="session")
def latent_model_dir(tmp_path_factory) -> Path:
    from contextdiff_ref.models.tiny import write_tiny_model_dir

    return write_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny-latent", latent=True, seed=1)


@pytest.fixture(scope="session")
def pixel_pipe(pixel_model_dir):
    from contextdiff_ref.pipelines.text_to_image import ContextDiffPipeline

    return ContextDiffPipeline.from_pretrained(pixel_model_dir)


@pytest.fixture(scope="session")
def latent_pipe(latent_model_dir):
    from contextdiff_ref.pipelines.text_to_image import ContextDiffPipeline

    return ContextDiffPipeline.from_pretrained(latent_model_dir)


# Engine directories (ONNX Runtime artifacts), built once per session: up to 3 images per call. The default flavour
# for ONNX Runtime has attention fused into its MultiHeadAttention op; the "standard" ones use ai.onnx ops only.
def _engines(model_dir, tmp_path_factory, name, precision, dynamic_size, flavour=None, step_cache=False):
    from export.build import BuildOptions, build_engine_dir
    from export.onnx_export import Flavour
    from runtime.options import BuildBackend, Precision

    out = tmp_path_factory.mktemp("engines") / name
    options = BuildOptions(backend=BuildBackend.ONNXRUNTIME, precision=Precision(precision), max_images=3, dynamic_size=dynamic_size,
                           flavour=Flavour(flavour) if flavour else None, step_cache=step_cache)  # fmt: skip
    build_engine_dir(model_dir, out, options)
    return out


def _engine_fixture(name: str, model: str, precision: str, dynamic_size: bool, flavour: str | None = None, step_cache: bool = False):
    """A session fixture ``name``: the engine directory of the model fixture ``model``, built on first use."""

    @pytest.fixture(scope="session", name=name)
    def fixture(request, tmp_path_factory):
        return _engines(request.getfixturevalue(model), tmp_path_factory, name, precision, dynamic_size, flavour, step_cache)

    return fixture


latent_fp32_dir = _engine_fixture("latent_fp32_dir", "latent_model_dir", "fp32", dynamic_size=True)
pixel_fp32_dir = _engine_fixture("pixel_fp32_dir", "pixel_model_dir", "fp32", dynamic_size=False)
# step caching's graphs too (--step-cache): the UNet with its feature output and the shallow UNet, in both flavours
pixel_step_cache_dir = _engine_fixture("pixel_step_cache_dir", "pixel_model_dir", "fp32", dynamic_size=False, step_cache=True)
pixel_step_cache_standard_dir = _engine_fixture("pixel_step_cache_standard_dir", "pixel_model_dir", "fp32", dynamic_size=False, flavour="standard",
                                                step_cache=True)  # fmt: skip
pixel_step_cache_fp16_dir = _engine_fixture("pixel_step_cache_fp16_dir", "pixel_model_dir", "fp16", dynamic_size=False, step_cache=True)


# The shipped models, trained: their UNet's output matters, so an export error shows in the images (the tiny models'
# UNet output is damped by 0.02 to keep a random network stable under guidance, which hides such errors). Every image
# parity test runs on these; the tiny models serve the tests of behaviour. The latent model's engines take half to
# twice its size (the per-component checks run three shapes); one ONNX export serves both profiles (the ONNX cache).
@pytest.fixture(scope="session")
def shipped_pixel_dir() -> Path:
    from contextdiff_ref.models.defaults import default_model_dir

    return default_model_dir()


@pytest.fixture(scope="session")
def shipped_latent_dir() -> Path:
    from contextdiff_ref.models.defaults import latent_model_dir

    return latent_model_dir()


shipped_pixel_fp32_dir = _engine_fixture("shipped_pixel_fp32_dir", "shipped_pixel_dir", "fp32", dynamic_size=False)
shipped_pixel_fp16_dir = _engine_fixture("shipped_pixel_fp16_dir", "shipped_pixel_dir", "fp16", dynamic_size=False)
shipped_latent_fp32_dir = _engine_fixture("shipped_latent_fp32_dir", "shipped_latent_dir", "fp32", dynamic_size=True)
shipped_latent_fp16_dir = _engine_fixture("shipped_latent_fp16_dir", "shipped_latent_dir", "fp16", dynamic_size=True)
shipped_latent_standard_fp32_dir = _engine_fixture("shipped_latent_standard_fp32_dir", "shipped_latent_dir", "fp32", dynamic_size=True, flavour="standard")
shipped_latent_standard_fp16_dir = _engine_fixture("shipped_latent_standard_fp16_dir", "shipped_latent_dir", "fp16", dynamic_size=True, flavour="standard")


@pytest.fixture
def shipped(request):
    """shipped("latent", "fp16") -> (model directory, engine directory) of a shipped model; "latent-standard" for the
    ai.onnx-only flavour."""

    def get(kind: str, precision: str = "fp32") -> tuple[Path, Path]:
        model = request.getfixturevalue(f"shipped_{kind.split('-')[0]}_dir")
        return model, request.getfixturevalue(f"shipped_{kind.replace('-', '_')}_{precision}_dir")

    return get

"""The Torch backend of runtime.Generator: the reference modules behind the runtime's Runner protocol.

It lives here, not in ``runtime``, because it runs ``contextdiff_ref``'s modules and ``runtime`` never imports
torch or this package. On the CPU, NumPy arrays are shared with torch without copies (``torch.from_numpy``);
on a GPU, CuPy arrays through DLPack (``torch.from_dlpack`` / ``cupy.from_dlpack``), optionally in fp16.

LoRAs (runtime/lora.py, ``torch_generator(loras=)`` / ``Generator.set_loras``): each touched weight becomes
``base + delta`` (float32 sum, cast to the module's dtype) copied into the parameter in place (so captured CUDA graphs
stay valid), from a copy of its base weight kept while a LoRA touches it: switching never accumulates and removal
restores the base exactly. Only the touched weights are copied; no weight map is needed (the modules are at hand).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from contextdiff_ref.models.graphs import graph_modules, model_dims
from contextdiff_ref.models.model_dir import ModelComponents, load_model_dir, model_limits, runtime_tokenizer_json
from runtime.backends.base import RunnerBase
from runtime.generator import Generator
from runtime.lora import weight_names
from runtime.manifest import ComponentArtifacts, EngineManifest, load_manifest
from runtime.options import Precision
from runtime.specs import Component, ComponentSpec, make_profile
from runtime.step_cache import DEFAULT_BRANCH

logger = logging.getLogger(__name__)


class TorchRunner(RunnerBase):
    """Runs one spec'd reference module (a ``contextdiff_ref.models.graphs`` wrapper) on ``device``."""

    def __init__(self, spec: ComponentSpec, module: torch.nn.Module, *, device: str = "cpu", fp16: bool = False, cuda_graphs: bool = True) -> None:
        super().__init__(spec)
        self.module, self.device, self.fp16 = module, torch.device(device), fp16
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self._graphs: dict[tuple, tuple[Any, list[torch.Tensor], torch.Tensor]] = {}
        self._saved: dict[str, torch.Tensor] = {}  # base values of the weights a LoRA now changes (prepare_weights)

    def _activate(self) -> None:
        self.module.to(self.device, torch.float16 if self.fp16 else torch.float32).eval()

    def weights(self) -> dict[str, torch.nn.Parameter]:
        """The module's weights (parameters of two or more dims) by the names LoRAs and weight maps use."""
        named = {n: p for n, p in self.module.named_parameters() if p.ndim >= 2}
        return {short: named[n] for n, short in weight_names(named).items()}

    def prepare_weights(self, weights: Any) -> Callable[[], None]:
        """LoRA weights (module docstring): the new values computed now, from the saved bases; the returned call copies
        them (and the bases of weights no longer touched) into the parameters."""
        deltas = weights.deltas if weights is not None else {}
        params, saved = self.weights(), self._saved
        with torch.no_grad():
            bases = {n: saved[n] if n in saved else params[n].detach().clone() for n in deltas}
            new = {n: (bases[n].float() + torch.from_numpy(d).to(bases[n].device)).to(params[n].dtype) for n, d in deltas.items()}

        def commit() -> None:
            with torch.no_grad():
                for name, base in saved.items():
                    if name not in new:
                        params[name].copy_(base)
                for name, value in new.items():
                    params[name].copy_(value)
            self._saved = bases

        return commit

    def _to_torch(self, value: Any) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else torch.from_dlpack(value)
        if self.fp16 and tensor.is_floating_point():
            tensor = tensor.half()
        return tensor.to(self.device)

    def _infer(self, feed: Mapping[str, Any]) -> dict[str, Any]:
        inputs = [self._to_torch(feed[t.name]) for t in self.spec.inputs]
        with torch.inference_mode():
            out = self._replay(inputs) if self.cuda_graphs else self.module(*inputs)
            outs = [o.float().contiguous() for o in (out if isinstance(out, tuple) else (out,))]  # a step-cache UNet's: (prediction, feature)
        if self.device.type == "cpu":
            return {t.name: o.numpy() for t, o in zip(self.spec.outputs, outs)}
        import cupy

        return {t.name: cupy.from_dlpack(o) for t, o in zip(self.spec.outputs, outs)}

    def _replay(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """CUDA graphs, one per input shape: captured on first sight (after a warm-up on a side stream), then
        replayed with the inputs copied into the captured tensors — no per-kernel launch overhead."""
        key = tuple(tuple(x.shape) for x in inputs)
        if key not in self._graphs:
            static = [x.clone() for x in inputs]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self.module(*static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                output = self.module(*static)
            self._graphs[key] = (graph, static, output)
        graph, static, output = self._graphs[key]
        for target, source in zip(static, inputs):
            target.copy_(source)
        graph.replay()
        return output


def torch_generator(model_dir: str | os.PathLike[str], engine_dir: str | os.PathLike[str] | None = None, *, device: str = "cpu", fp16: bool = False,
                    max_images: int = 1, loras: Sequence[Any] = (), ignore_unmatched: bool = False, cache_branch: int | None = None) -> Generator:  # fmt: skip
    """A runtime.Generator whose engines are the reference modules of ``model_dir``. ``engine_dir``, if given,
    supplies the manifest, tokenizer and scheduler (its ONNX/plan files are not used); without one they come from the
    model directory itself (:func:`model_manifest`, for up to ``max_images`` images per call at the model's default
    size): no export needed. ``loras``: [(file, scale), ...] merged into the modules' weights (``set_loras`` switches).
    ``cache_branch``: step caching's skip branch (None: the engine directory's ``build.step_cache_branch``, else 1)."""
    components = load_model_dir(model_dir)
    manifest = load_manifest(engine_dir, verify=False) if engine_dir is not None else None
    if cache_branch is None:
        recorded = manifest.step_cache_branch if manifest is not None else None
        cache_branch = DEFAULT_BRANCH if recorded is None else recorded
    # the UNet also gives its feature (bitwise the same prediction): step caching
    modules = graph_modules(components, vae_encoder=True, step_cache=True, cache_branch=cache_branch)
    xp = np
    if torch.device(device).type == "cuda":
        import cupy as xp  # noqa: F811
    if manifest is not None:
        generator = Generator(manifest, _runners(manifest, modules, device, fp16), backend="torch", xp=xp)
    else:
        with tempfile.TemporaryDirectory(prefix="contextdiff-torch-") as folder:  # the Generator reads both files when made
            manifest = model_manifest(components, Path(model_dir), Path(folder), max_images=max_images, cache_branch=cache_branch)
            generator = Generator(manifest, _runners(manifest, modules, device, fp16), backend="torch", xp=xp)
    generator.module_shapes = {c: {n: tuple(p.shape) for n, p in r.weights().items()} for c, r in generator.runners.items()}
    if loras:
        generator.set_loras(loras, ignore_unmatched=ignore_unmatched)
    return generator


def _runners(manifest: EngineManifest, modules: dict[Component, torch.nn.Module], device: str, fp16: bool) -> dict[Component, TorchRunner]:
    return {c: TorchRunner(a.spec, modules[c], device=device, fp16=fp16) for c, a in manifest.components.items()}


def model_manifest(components: ModelComponents, model_dir: Path, folder: Path, *, max_images: int = 1, cache_branch: int = DEFAULT_BRANCH) -> EngineManifest:
    """What an engine directory's manifest tells the Generator, taken from a loaded model directory: dims, limits,
    profiles at the default size, and the tokenizer and scheduler written to ``folder`` — the Torch backend's
    manifest without building an engine directory. Its components name no artifact (``onnx`` is the model directory:
    the modules are the reference's own)."""
    dims, limits = model_dims(components, cache_branch), model_limits(components)
    (folder / "tokenizer.json").write_text(runtime_tokenizer_json(components, dims.text_length), encoding="utf-8")
    (folder / "scheduler.json").write_text(json.dumps(components.scheduler_config.to_dict()), encoding="utf-8")
    latent = components.vae is not None
    names = [Component.TEXT_ENCODER, Component.UNET, Component.UNET_SHALLOW, Component.ADAPTER] + ([Component.VAE_DECODER, Component.VAE_ENCODER] if latent else [])
    artifacts = {}
    for c in names:
        profile = make_profile(c, dims, max_images=max_images, height=limits.default_height, width=limits.default_width, dynamic_size=False)
        artifacts[c] = ComponentArtifacts(c, Precision.FP32.value, profile, model_dir, None, None, feature_output=c is Component.UNET)
    data = {"tokenizer": {"file": "tokenizer.json"}, "scheduler": {"file": "scheduler.json"}, "build": {"backend": "torch", "max_images": max_images}}
    return EngineManifest(folder, data, dims, limits, artifacts)

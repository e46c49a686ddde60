"""The Runner protocol every backend implements, and RunnerBase, the validation and errors they share. The denoising
loop only ever calls ``infer``.

``activate()`` loads, ``infer(feed) -> outputs`` runs (the public method validates the feed against the
component spec, ``_infer`` does the work), ``close()`` releases; runners are context managers.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol

from runtime.errors import ContextDiffError, InvalidArgumentError, RunnerError, first_line
from runtime.specs import ComponentSpec

Array = Any  # numpy.ndarray (CPU runners) or cupy.ndarray (GPU runners)


class Runner(Protocol):
    spec: ComponentSpec

    def activate(self) -> None: ...

    def infer(self, feed: Mapping[str, Array]) -> dict[str, Array]: ...

    def close(self) -> None: ...


class RunnerBase:
    """Validation and context management shared by every backend; subclasses implement ``_activate``/``_infer``."""

    def __init__(self, spec: ComponentSpec) -> None:
        self.spec = spec
        self.active = False

    def activate(self) -> None:
        if not self.active:
            try:
                self._activate()
            except ContextDiffError:
                raise
            except Exception as exc:  # the backend's own failure: the package's error, one line naming the component
                raise RunnerError(f"{type(self).__name__} could not load {self.spec.name}: {first_line(exc)}") from exc
            self.active = True

    def close(self) -> None:
        self.active = False

    def __enter__(self) -> RunnerBase:
        self.activate()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def infer(self, feed: Mapping[str, Array]) -> dict[str, Array]:
        """Run on ``feed`` ({input name: array}); returns {output name: array}."""
        if not self.active:
            raise RunnerError(f"{type(self).__name__}({self.spec.name}) is not active: call activate() or use it as a context manager")
        for tensor in self.spec.inputs:
            value = feed.get(tensor.name)
            if value is None or str(value.dtype) != tensor.dtype or value.ndim != len(tensor.dims):
                got = "missing" if value is None else f"{value.dtype} array of shape {tuple(value.shape)}"
                raise InvalidArgumentError(f"{self.spec.name} input {tensor.name!r}", got, f"a {tensor.dtype} array with dims {tensor.dims}")
        try:
            return self._infer(feed)
        except ContextDiffError:
            raise
        except Exception as exc:  # the backend's own failure (ONNX Runtime's Fail, CUDA, TensorRT): one line naming the component
            raise RunnerError(f"{type(self).__name__} failed running {self.spec.name}: {first_line(exc)}") from exc

    def prepare_weights(self, weights: Any) -> Callable[[], None]:
        """Stage new weights (a ``runtime.lora.ComponentWeights``, or None: the base weights) and return the call that
        puts them in use. Staging may fail (nothing changes then); the returned call may fail too (a backend that frees
        the old weights before loading the new ones, to hold one copy), and is then back on its previous weights.
        Backends without it refuse LoRAs."""
        raise RunnerError(f"{type(self).__name__} ({self.spec.name}): this backend cannot apply LoRAs")

    def _activate(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement _activate")

    def _infer(self, feed: Mapping[str, Array]) -> dict[str, Array]:
        raise NotImplementedError(f"{type(self).__name__} must implement _infer")

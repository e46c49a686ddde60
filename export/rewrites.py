"""Export-time rewrites: diffusers modules exported as graphs that compute the same values with fewer, better-supported
ops. Each is a context manager that changes the module only while it is exported and restores it after.

- :func:`split_geglu`: diffusers' ``GEGLU`` (the transformer blocks' feed-forward input) projects to 2·inner features
  and splits the result into the value and the gate (``chunk``); exported, that is one MatMul and a Split, and
  OpenVINO's CPU plugin runs that Split with its reference kernel (the default video UNet at batch 8 on one thread,
  profiled on a 2-core Xeon: 37.1 → 35.9 and 37.2 → 36.5 ms in two pairs of runs). Within the block each GEGLU projects
  twice, with the two halves of its weights (views, not copies): no Split, and each output is the same dot products.
  Both flavours get it: two MatMuls are inside TensorRT's support matrix like one.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from diffusers.models.activations import GEGLU

logger = logging.getLogger(__name__)

_HALVES = ("_export_value_weight", "_export_value_bias", "_export_gate_weight", "_export_gate_bias")


def _split_forward(self: GEGLU, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """(..., dim) -> (..., inner): value · GELU(gate), each projected with its half of ``proj``."""
    value = F.linear(hidden_states, self._export_value_weight, self._export_value_bias)
    return value * self.gelu(F.linear(hidden_states, self._export_gate_weight, self._export_gate_bias))


@contextlib.contextmanager
def split_geglu(module: torch.nn.Module) -> Iterator[int]:
    """Within the block every ``GEGLU`` in ``module`` projects its value and gate separately; yields how many."""
    layers = [m for m in module.modules() if type(m) is GEGLU]
    try:
        for layer in layers:
            weight, bias = layer.proj.weight, layer.proj.bias
            half = weight.shape[0] // 2
            parts = (weight[:half], None if bias is None else bias[:half], weight[half:], None if bias is None else bias[half:])
            for name, part in zip(_HALVES, parts):
                layer.register_parameter(name, None if part is None else torch.nn.Parameter(part, requires_grad=False))
            layer.forward = _split_forward.__get__(layer)
        logger.debug("GEGLU split into value and gate projections in %d layers", len(layers))
        yield len(layers)
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)
            for name in _HALVES:
                layer._parameters.pop(name, None)

"""All randomness of sampling, in one documented order, so any implementation can reproduce it exactly.

Order of draws from ``numpy.random.Generator(numpy.random.PCG64(seed))``, all ``standard_normal`` in float32:

1. the initial noise x_T, shape (N, C, h, w) — drawn even when the caller passes ``latents=``, so the
   per-step noise below does not depend on whether latents were given (a video edit with ``region_noise``,
   :mod:`runtime.frame_folded_editing`, mixes this draw into its inverted x_T inside the mask);
2. only when η > 0: the per-step noise z, shape (num_steps, N, C, h, w), one draw; z[i] is used at step i
   (also at a step whose σ is 0, where it is simply not added).

Drawing z in one call gives the same numbers as drawing z[0], z[1], ... one after another.

A batch that joins several calls (``runtime.Generator.run_batch``, the serving layer's dynamic batching) draws each
call's noise from its own seed in the order above and stacks them along the batch axis (:func:`draw_noise_parts`), so
every call gets exactly the noise — and the images — it gets alone.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

logger = logging.getLogger(__name__)


def resolve_seed(seed: int | None, high: int = 2**63) -> int:
    """The seed to use: ``seed`` itself, or a fresh one from the OS below ``high`` (logged, so a run can be repeated)."""
    if seed is not None:
        return int(seed)
    fresh = int(np.random.SeedSequence().entropy % high)
    logger.info("no seed given; using seed=%d", fresh)
    return fresh


def draw_noise(seed: int, shape: tuple[int, ...], num_steps: int, eta: float) -> tuple[np.ndarray, np.ndarray | None]:
    """(x_T (N, C, h, w), z (num_steps, N, C, h, w) or None when η = 0), float32, in the order above."""
    rng = np.random.Generator(np.random.PCG64(seed))
    initial = rng.standard_normal(tuple(shape), dtype=np.float32)
    step_noise = rng.standard_normal((num_steps, *shape), dtype=np.float32) if eta > 0 else None
    return initial, step_noise


def draw_noise_parts(parts: Sequence[tuple[int, int]], sample_shape: tuple[int, ...], num_steps: int,
                     eta: float) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
    """``parts``: (seed, images) per joined call. (x_T (ΣN, C, h, w), z (num_steps, ΣN, C, h, w) or None): each part's
    :func:`draw_noise` with shape (images, *sample_shape), stacked along the batch axis (axis 1 of z)."""
    drawn = [draw_noise(seed, (count, *sample_shape), num_steps, eta) for seed, count in parts]
    if len(drawn) == 1:
        return drawn[0]
    initial = np.concatenate([d[0] for d in drawn])
    return initial, None if drawn[0][1] is None else np.concatenate([d[1] for d in drawn], axis=1)

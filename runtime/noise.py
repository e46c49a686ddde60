"""All randomness of sampling, in one documented order, so any implementation can reproduce it exactly.

Order of draws from ``numpy.random.Generator(numpy.random.PCG64(seed))``, all ``standard_normal`` in float32:

1. the initial noise x_T, shape (N, C, h, w) — drawn even when the caller passes ``latents=``, so the
   per-step noise below does not depend on whether latents were given;
2. only when η > 0: the per-step noise z, shape (num_steps, N, C, h, w), one draw; z[i] is used at step i
   (also at a step whose σ is 0, where it is simply not added).

Drawing z in one call gives the same numbers as drawing z[0], z[1], ... one after another.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def resolve_seed(seed: int | None) -> int:
    """The seed to use: ``seed`` itself, or a fresh one from the OS (logged, so a run can be repeated)."""
    if seed is not None:
        return int(seed)
    fresh = int(np.random.SeedSequence().entropy % (2**63))
    logger.info("no seed given; using seed=%d", fresh)
    return fresh


def draw_noise(seed: int, shape: tuple[int, ...], num_steps: int, eta: float) -> tuple[np.ndarray, np.ndarray | None]:
    """(x_T (N, C, h, w), z (num_steps, N, C, h, w) or None when η = 0), float32, in the order above."""
    rng = np.random.Generator(np.random.PCG64(seed))
    initial = rng.standard_normal(tuple(shape), dtype=np.float32)
    step_noise = rng.standard_normal((num_steps, *shape), dtype=np.float32) if eta > 0 else None
    return initial, step_noise

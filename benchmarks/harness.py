"""What every benchmark script shares: the systems it times, warm-up and interleaved runs (A B C A B C ...: drift
hits all alike), percentiles and per-stage means, markdown tables, the machine it ran on, and its JSON file (written
atomically). Torch-free; per-stage timing itself is benchmarks/timing.py's Timer.
"""

from __future__ import annotations

import logging
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

import numpy as np

from runtime.files import atomic_write_json

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class System:
    """One thing a benchmark times: ``run`` does one call and returns when its result is ready; ``timer`` (a
    benchmarks.timing.Timer) collects its per-stage times; ``e2e`` its end-to-end seconds; ``kind`` and ``result``
    whatever the script records beside them."""

    name: str
    run: Callable[[], Any]
    timer: Any
    kind: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    e2e: list[float] = field(default_factory=list)


def interleave(items: Sequence[T], rounds: int, call: Callable[[T], Any], *, label: str | None = "") -> None:
    """``rounds`` rounds calling ``call`` on each item in turn (A B C A B C ...), so drift hits all alike; each round
    logged as "<label>run i/n done" (``label=None``: not logged)."""
    for i in range(rounds):
        for item in items:
            call(item)
        if label is not None:
            logger.info("%srun %d/%d done", label, i + 1, rounds)


def warm_up(systems: Iterable[System], runs: int) -> None:
    """``runs`` calls of each system, one system after the other, then its timer reset."""
    for system in systems:
        for _ in range(runs):
            system.run()
        system.timer.reset()


def time_runs(systems: Sequence[System], runs: int, *, label: str = "", after_run: Callable[[System], Any] | None = None) -> None:
    """Interleaved timed runs: each system's end-to-end seconds appended to its ``e2e``; ``after_run`` sees each system
    after each of its runs."""

    def timed(system: System) -> None:
        start = time.perf_counter()
        system.run()
        system.e2e.append(time.perf_counter() - start)
        if after_run is not None:
            after_run(system)

    interleave(systems, runs, timed, label=label)


def percentiles(seconds: Sequence[float], qs: Sequence[int] = (50, 90, 99), *, digits: int | None = None) -> dict[str, float]:
    """{"p50_s": ..., "p90_s": ...} of ``seconds`` (rounded to ``digits`` where given)."""
    values = np.asarray(seconds, dtype=float)
    out = {f"p{q}_s": float(np.percentile(values, q)) for q in qs}
    return out if digits is None else {k: round(v, digits) for k, v in out.items()}


def stages_ms(samples: Mapping[str, Sequence[float]], *, skip: Iterable[str] = ()) -> dict[str, float]:
    """Mean milliseconds per call of each timed stage (a Timer's ``samples``: seconds per call)."""
    return {k: 1e3 * float(np.mean(v)) for k, v in samples.items() if k not in set(skip)}


def cell(value: Any, spec: str) -> str:
    """``value`` formatted by ``spec``, or "–" for None (a stage or figure that does not apply)."""
    return "–" if value is None else format(value, spec)


def table_row(cells: Sequence[Any], width: int | None = None) -> str:
    """One markdown row, padded with empty cells to ``width`` columns."""
    padded = [*map(str, cells), *[""] * ((width or len(cells)) - len(cells))]
    return "|" + "".join(f" {c} |" if c else " |" for c in padded)


def render_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table: the header, its rule, and the rows (a short row, e.g. "not run: why", padded)."""
    return "\n".join([table_row(header), "|" + "---|" * len(header), *(table_row(r, len(header)) for r in rows)])


def not_run_rows(skipped: Mapping[str, str], *lead: str) -> list[list[str]]:
    """Table rows for the systems that could not run here: [*lead, name, "not run: why"]."""
    return [[*lead, name, f"not run: {why}"] for name, why in skipped.items()]


def peak_rss_mib() -> float:
    """This process's peak resident memory (MiB): Linux's VmHWM, which starts afresh at exec. Not ``ru_maxrss``: Linux
    keeps that across exec, so a worker spawned by a parent that once held 11 GiB reported 11 GiB whatever it used."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine(**extra: Any) -> dict[str, Any]:
    """Platform, processor and Python version of this machine, then ``extra``."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(), "python": sys.version.split()[0], **extra}


def write_result(result: Mapping[str, Any], out: Path, table: str) -> int:
    """Write ``result`` as JSON to ``out`` (atomically), print ``table`` and where the JSON went; exit status 0."""
    atomic_write_json(out, result)
    print(table)
    print(f"\nJSON: {out}")
    return 0


"""The suite's skip policy: a test may skip only for a reason listed here (what this machine lacks that the test is
about). Any other skip fails the session, so a broken import of a test dependency, or a fixture that silently gives
up, is red rather than quietly yellow. Loaded by tests/conftest.py; ``python -m pytest -p tests.skip_policy`` too."""

from __future__ import annotations

import re

import pytest

ALLOWED_SKIPS = {
    "no TensorRT builder": r"TensorRT|tensorrt",  # export/test_tensorrt.py, runtime/backends/test_tensorrt.py (and "usable here" on GPU machines)
    "a CUDA GPU / provider present or absent": r"CUDA GPU is visible here|has the CUDA provider",
    "a CPU with or without bf16": r"this CPU has bf16|bf16 cannot run on this CPU",
    "not Linux (RSS, CPU flags from /proc)": r"Linux only",
}
_PATTERN = re.compile("|".join(f"(?:{p})" for p in ALLOWED_SKIPS.values()))
_refused: list[str] = []


def skip_allowed(reason: str) -> bool:
    return _PATTERN.search(reason) is not None


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail") and not skip_allowed(reason := _reason(report)):
        _refused.append(f"{report.nodeid}: {reason}")


def pytest_collectreport(report: pytest.CollectReport) -> None:  # a whole module skipped at import
    if report.skipped and not skip_allowed(reason := _reason(report)):
        _refused.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _refused:
        lines = "\n".join(f"  {r}" for r in _refused)
        session.config.get_terminal_writer().line(f"\nskips the suite does not allow (tests/skip_policy.py lists the allowed reasons):\n{lines}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

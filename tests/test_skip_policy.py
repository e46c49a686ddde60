"""The skip policy (tests/skip_policy.py): a skip for a listed reason passes; any other skip, in a test or at a
module's import, fails the session and is named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pytest(tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(source)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.skip_policy", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                           str(tmp_path / "test_sample.py")], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_listed_reasons_pass_and_others_fail_the_session(tmp_path):
    allowed = _pytest(tmp_path, "import pytest\n\ndef test_a():\n    pytest.skip('TensorRT is not importable (no module)')\n\n"
                                "def test_b():\n    assert True\n")  # fmt: skip
    assert allowed.returncode == 0, allowed.stdout
    refused = _pytest(tmp_path, "import pytest\n\ndef test_a():\n    pytest.skip('TensorRT is not importable')\n\n"
                                "def test_b():\n    pytest.skip('the fixture gave up')\n")  # fmt: skip
    assert refused.returncode == 1 and "test_sample.py::test_b: the fixture gave up" in refused.stdout, refused.stdout
    assert "test_a" not in refused.stdout.split("does not allow")[1]
    broken = _pytest(tmp_path, "import pytest\nmissing = pytest.importorskip('no_such_module_here')\n\ndef test_a():\n    pass\n")
    assert broken.returncode == 1 and "no_such_module_here" in broken.stdout, broken.stdout

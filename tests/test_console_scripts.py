"""pyproject.toml's console scripts: each target imports and, called as a console script calls it
(``sys.exit(main())``), answers --help with its usage and exit status 0."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]


def test_every_command_has_a_script():
    assert set(SCRIPTS) == {"contextdiff-build", "contextdiff-generate", "contextdiff-edit", "contextdiff-serve", "contextdiff-train",
                            "contextdiff-attach", "contextdiff-tune-video"}  # fmt: skip
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"]["find"]["include"]
    assert all(any(target.split(".")[0] + "*" == p for p in packages) for target in SCRIPTS.values())  # in the wheel


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_target_answers_help(name):
    module, function = SCRIPTS[name].split(":")
    assert callable(getattr(importlib.import_module(module), function))
    code = f"import sys; from {module} import {function}; sys.exit({function}(['--help']))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:"), result.stdout

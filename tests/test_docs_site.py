"""The documentation: the mkdocs site builds in strict mode (broken links, missing anchors and pages left out of the nav
are errors, mkdocs.yml), and the README stays a user's README — short, its relative links resolving, its Quickstart
the two commands a new user runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

QUICKSTART_COMMANDS = [
    'pip install -c constraints.txt -e ".[reference]" && python export/build_engines.py'
    ' && python -m runtime "a red circle at the top left" -o contextdiff.png',
    'pip install -c constraints.txt -e ".[reference,test]" && python -m pytest -q',
]

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _without_code(text: str) -> str:
    """Markdown with fenced blocks and inline code spans blanked, so that links are only looked for in prose."""
    text = _FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    """GitHub's (and mkdocs' default) heading anchor: markup and punctuation dropped except hyphens, lowercase, spaces
    to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def _anchors(markdown_file: Path) -> set[str]:
    text = _FENCE.sub("", markdown_file.read_text(encoding="utf-8"))
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)}


def _section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def test_mkdocs_build_strict(tmp_path):
    """Warnings fail a strict build: a link to a missing page or anchor, a page not in the nav, a nav entry without a page."""
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's end-of-life banner, not a warning of the build
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, f"mkdocs build --strict failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; the rest belongs in docs/"


def test_readme_relative_links_resolve():
    text = README.read_text(encoding="utf-8")
    links = [m.group(1) for m in _LINK.finditer(_without_code(text))]
    relative = [link for link in links if not re.match(r"[a-z][a-z0-9+.-]*:", link, re.I)]
    assert relative, "README.md links to no docs page"
    broken = []
    for link in relative:
        path, _, anchor = link.partition("#")
        target = (ROOT / path).resolve() if path else README
        if not target.exists():
            broken.append(f"{link}: {path} does not exist")
        elif anchor and (target.suffix != ".md" or anchor not in _anchors(target)):
            broken.append(f"{link}: no heading with the anchor #{anchor} in {path or 'README.md'}")
    assert not broken, "broken links in README.md:\n" + "\n".join(broken)


def test_slug_matches_github():
    assert _slug("SD-1.5-class model: build, run and parity check") == "sd-15-class-model-build-run-and-parity-check"
    assert _slug("Embedded default model, CPU") == "embedded-default-model-cpu"


def test_quickstart_is_the_two_commands():
    quickstart = _section(README.read_text(encoding="utf-8"), "Quickstart")
    blocks = [(m.group(1).strip(), m.group(2)) for m in _FENCE.finditer(quickstart)]
    assert [lang for lang, _ in blocks] == ["bash", "bash"], f"the Quickstart's fenced blocks: {blocks}"
    assert [body.strip("\n") for _, body in blocks] == QUICKSTART_COMMANDS

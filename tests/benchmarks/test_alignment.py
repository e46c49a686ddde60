"""Alignment evaluation: the report on known images, paired seeds, and the command line on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from benchmarks.alignment import evaluate, main, markdown_table, write_grid
from contextdiff_ref.data.shapes import COLOURS, POSITIONS, SHAPES, ShapeObject, render


def parse(prompt: str) -> tuple[ShapeObject, ...]:
    objects = []
    for part in prompt.split(" and "):
        words = part.split()
        objects.append(ShapeObject(words[1], words[2], " ".join(words[5:])))
    assert all(o.colour in COLOURS and o.shape in SHAPES and o.position in POSITIONS for o in objects)
    return tuple(objects)


def oracle(prompts, seed):
    return np.stack([render(parse(p)) for p in prompts])


def blank(prompts, seed):
    return np.zeros((len(prompts), 32, 32, 3), np.float32)


def test_report_for_a_perfect_and_an_empty_model(tmp_path):
    seeds = []
    report, images = evaluate({"contextdiff": oracle, "baseline": lambda p, s: seeds.append(s) or blank(p, s)}, batch=8)
    for name, n in (("one_object", 72), ("two_object", 72)):
        assert report["models"]["contextdiff"][name]["images"] == n
        assert report["models"]["contextdiff"][name]["exact_prompt_rate"] == 1.0
        assert report["models"]["baseline"][name]["colour_position_accuracy"] == 0.0
        assert report["difference"][name]["full_accuracy"]["difference"] == 1.0
    assert report["models"]["contextdiff"]["two_object"]["objects"] == 144
    assert seeds == list(range(9)) * 2  # chunk k of each set: seed k
    assert images["contextdiff"]["one_object"].shape == (72, 32, 32, 3)
    write_grid(images, tmp_path / "grid.png")
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (4 * 128, 12 * 128, 3)  # rows: model x prompt set; 12 images of 32 px, 4x upscaled
    assert grid[:256].max() == 255 and grid[256:].max() == 0  # the perfect model's rows, then the blank model's
    table = markdown_table(report)
    assert "| contextdiff | one_object | 72 | 100.0% | 100.0% | 100.0% |" in table and "ContextDiff − baseline" in table


def test_images_per_prompt_and_limit():
    report, images = evaluate({"contextdiff": oracle}, images_per_prompt=2, limit=3, batch=4)
    assert report["models"]["contextdiff"]["one_object"]["images"] == 6 and "difference" not in report


@pytest.mark.slow
def test_command_line_on_a_tiny_model_through_the_runtime(pixel_model_dir, tmp_path, capsys):
    out = tmp_path / "report.json"
    args = ["--model", str(pixel_model_dir), "--baseline", str(pixel_model_dir), "--limit", "2", "--steps", "2", "--batch", "2",
            "--engines", str(tmp_path / "engines"), "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["models"]["contextdiff"]["one_object"]["images"] == 2
    # the same model twice with the same seeds: identical images, so a zero difference
    assert all(d["difference"] == 0.0 for s in report["difference"].values() for d in s.values())
    assert (tmp_path / "engines" / "contextdiff" / "manifest.json").is_file()
    assert "| contextdiff |" in capsys.readouterr().out
    assert main(["--model", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["--model", str(pixel_model_dir), "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err

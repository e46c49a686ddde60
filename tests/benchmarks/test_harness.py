"""The benchmark harness: interleaved order, warm-up, percentiles, stage means and markdown tables (the scripts'
tables are checked byte for byte through their own tests)."""

from __future__ import annotations

import json

import pytest

from benchmarks.harness import System, cell, interleave, not_run_rows, percentiles, render_table, stages_ms, time_runs, warm_up, write_result


class _Timer:
    def __init__(self) -> None:
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1


def test_runs_are_interleaved_after_a_warm_up():
    calls: list[str] = []
    systems = [System(name, (lambda n: lambda: calls.append(n))(name), _Timer()) for name in "abc"]
    warm_up(systems, 2)
    assert calls == list("aabbcc") and all(s.timer.resets == 1 for s in systems)
    calls.clear()
    seen: list[str] = []
    time_runs(systems, 3, after_run=lambda s: seen.append(s.name))
    assert calls == list("abcabcabc") == seen and all(len(s.e2e) == 3 and min(s.e2e) >= 0 for s in systems)
    order: list[int] = []
    interleave([1, 2], 2, order.append, label=None)
    assert order == [1, 2, 1, 2]


def test_percentiles_and_stage_means():
    assert percentiles([1.0, 2.0, 3.0, 4.0, 5.0], (50, 90)) == {"p50_s": 3.0, "p90_s": pytest.approx(4.6)}
    assert percentiles([0.123456, 0.2], (50,), digits=4) == {"p50_s": 0.1617}
    assert stages_ms({"unet": [0.01, 0.03], "step": [1.0]}, skip=("step",)) == {"unet": pytest.approx(20.0)}


def test_markdown_table_pads_short_rows():
    table = render_table(["system", "s", "x"], [["a", "1.00", cell(None, ".2f")], ["b", "", "2"], *not_run_rows({"c": "no GPU"})])
    assert table.splitlines() == ["| system | s | x |", "|---|---|---|", "| a | 1.00 | – |", "| b | | 2 |", "| c | not run: no GPU | |"]


def test_write_result_writes_json_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "sub" / "r.json"
    assert write_result({"k": 1}, out, "| t |") == 0
    assert json.loads(out.read_text()) == {"k": 1} and out.read_text().endswith("}\n")
    assert capsys.readouterr().out == f"| t |\n\nJSON: {out}\n"

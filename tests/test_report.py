"""What `nas search` prints at the end (`nas.report`, printed by the CLI): a feasibility column,
whole 12-digit hashes on an 80-column terminal, and a plain line when no arch keeps the bounds."""

from __future__ import annotations

import pytest

from nas.cli import _print_best
from nas.config import Objective
from nas.runner import SearchResult


def _record(h: str, latency: float, feasible: bool, bound: float) -> dict:
    return {"hash": h * 64, "metrics": {"accuracy": 0.8, "latency_ms": latency, "params": 1e6, "macs": 2e7},
            "feasible": feasible, "violations": {} if feasible else {"latency_ms": [latency, bound]}}


def _result(records: list[dict], n_feasible: int) -> SearchResult:
    return SearchResult(best=records, objective=Objective(metric="accuracy", max_latency_ms=9.5),
                        n_archs=len(records), n_failed=0, n_feasible=n_feasible, exhausted=None,
                        table={"path": "/t.yaml", "device_id": "cpu", "sha256": "0" * 64, "scale": 1.0})


def test_hashes_stay_whole_and_broken_bounds_are_named_on_80_columns(
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    _print_best(_result([_record("a", 9.0, True, 9.5), _record("b", 12.25, False, 9.5)], n_feasible=1))
    out = capsys.readouterr().out
    assert "a" * 12 in out and "b" * 12 in out
    row_b = next(line for line in out.splitlines() if "b" * 12 in line)
    assert " no " in row_b and "12.250 > 9.5" in row_b
    assert "scale 1" in out and "no feasible" not in out


def test_a_search_without_a_feasible_arch_says_so(capsys: pytest.CaptureFixture) -> None:
    _print_best(_result([_record("c", 12.0, False, 9.5)], n_feasible=0))
    out = capsys.readouterr().out
    assert "no feasible arch found: every evaluated arch breaks latency <= 9.5 ms" in out


# -- the table at any terminal width: numbers and hashes whole, columns left out when they do not fit -------

def _wide_record(seed: int, feasible: bool) -> dict:
    import hashlib

    latency, params = 123.456 + seed, 12.3456e6 + seed
    violations = {} if feasible else {"latency_ms": [latency, 100.0], "params": [params, 10e6]}
    return {"hash": hashlib.sha256(str(seed).encode()).hexdigest(), "feasible": feasible, "violations": violations,
            "metrics": {"accuracy": 0.91234, "latency_ms": latency, "params": params, "macs": 1234.5678e6 * seed}}


def _render(table, width: int, soft_wrap: bool = False) -> str:
    import io

    from rich.console import Console

    console = Console(width=width, file=io.StringIO(), record=True, color_system=None, soft_wrap=soft_wrap)
    console.print(table)
    return console.export_text()


@pytest.mark.parametrize("soft_wrap", [False, True], ids=["wrap", "soft-wrap"])
@pytest.mark.parametrize("width", [40, 60, 80, 120])
def test_numbers_and_hashes_are_never_cut(width: int, soft_wrap: bool) -> None:
    import re

    from nas.report import best_rows, best_table

    records = [_wide_record(1, True), _wide_record(2, False), _wide_record(3, False)]
    result = SearchResult(best=records, objective=Objective(metric="accuracy", max_latency_ms=100, max_params=10**7),
                          n_archs=3, n_failed=0, n_feasible=1, exhausted=None, table=None)
    table = best_table(result, width)
    text = _render(table, width, soft_wrap)
    assert "…" not in text and all(len(line) <= width for line in text.splitlines()), text
    _, columns, rows = best_rows(result)
    shown = [c.header for c in table.columns]
    assert shown[:2] == ["rank", "arch"] and "accuracy" in shown, shown  # the objective's metric stays
    for row in rows:
        assert row[1] in text and len(row[1]) == 12, text
        for name, cell in zip(columns, row, strict=True):
            for number in re.findall(r"\d+(?:\.\d+)?", str(cell)) if name in shown else []:
                assert re.search(rf"(?<![\d.]){re.escape(number)}(?![\d.])", text), (number, text)
    hidden = [c for c in columns if c not in shown]
    if width >= 80:
        assert not hidden and table.caption is None
    else:
        assert hidden and all(c in " ".join(text.split()) for c in hidden), text  # the caption names them
    if width == 60:
        assert shown == ["rank", "arch", "accuracy", "latency ms", "params M"], shown  # bounds before feasible


def test_a_narrow_table_keeps_the_objective_and_its_bounds_longest() -> None:
    from nas.report import best_table

    records = [_wide_record(1, False)]
    objective = Objective(metric="latency_ms", mode="min", max_params=10**7)
    result = SearchResult(best=records, objective=objective, n_archs=1, n_failed=0, n_feasible=0, exhausted=None,
                          table=None)
    assert [c.header for c in best_table(result, 55).columns] == ["rank", "arch", "feasible", "latency ms",
                                                                  "params M"]
    assert [c.header for c in best_table(result, 50).columns] == ["rank", "arch", "latency ms", "params M"]
    assert [c.header for c in best_table(result, 40).columns] == ["rank", "arch", "latency ms"]

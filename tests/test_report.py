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

"""`nas report` and `nas.run_report`: the front is exactly the non-dominated feasible archs, the hypervolume curve
is the hypervolume of the archs seen so far, best-so-far is the running best, the plots are PNG files, and bad
input is one line with exit 2 and nothing written.

Run dirs are built by hand (config.yaml from a `RunConfig`, trials.jsonl lines in the format a search writes, read
back through `RunDir`) or by a real search without Ray (`Search` with LUT-priced archs). Expected fronts come from a
brute-force domination check, independent of the Optuna code the module uses.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
import yaml
from typer.testing import CliRunner

from nas.arch import canonical_json
from nas.config import Objective, RunConfig
from nas.errors import UserError
from nas.objective import hypervolume
from nas.run_dir import DiskFullError, RunDir, arch_hash
from nas.run_report import Report, format_rows, hypervolume_curve, reference_point, write_search_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PARETO = Objective(kind="pareto", metrics={"accuracy": "max", "latency_ms": "min"}, max_latency_ms=8.0)
PARETO3 = Objective(kind="pareto", metrics={"accuracy": "max", "latency_ms": "min", "params": "min"})
SCALAR = Objective(metric="accuracy", mode="max", max_latency_ms=8.0)


def _write_run(run: Path, objective: Objective, n: int, budget: int | None = None, seed: int = 0,
               failed_every: int = 17, evaluator: str = "train") -> list[dict]:
    """A run dir of `n` trial lines as a search writes them (every `failed_every`-th arch failed); returns them."""
    run.mkdir(parents=True, exist_ok=True)
    config = RunConfig(evaluator=evaluator, objective=objective, trials=budget or n).model_dump(mode="json")
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "latency_table": None}, sort_keys=True))
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        arch = {"space": "proxylessnas", "choices": {"s1.op": f"mb{i}_k3"}, "config": {}}
        common = {"trial": i, "arch": arch, "hash": arch_hash(arch), "node": "n", "host": "h", "pid": 1,
                  "finished_at": "2026-01-01T00:00:00+00:00"}
        if i % failed_every == failed_every - 1:
            lines.append({**common, "status": "failed", "metrics": {}, "score": None, "error": "ValueError: boom"})
            continue
        latency = round(float(rng.uniform(1.0, 10.0)), 3)  # rounded: ties in a metric happen in real runs
        accuracy = round(float(1 - np.exp(-latency / 3) * rng.uniform(0.5, 1.0)), 3)
        metrics = {"accuracy": accuracy, "latency_ms": latency, "params": int(rng.integers(1, 50)) * 100_000,
                   "macs": int(rng.integers(1, 9)) * 1_000_000}
        feasible = objective.max_latency_ms is None or latency <= objective.max_latency_ms
        lines.append({**common, "status": "ok", "metrics": metrics, "feasible": feasible,
                      "score": accuracy if feasible else -1e9 * (1 + latency / objective.max_latency_ms - 1)})
    (run / "trials.jsonl").write_text("".join(canonical_json(line) + "\n" for line in lines))
    assert len(RunDir(run).read_trials()) == n  # the real reader accepts every line
    return lines


def _brute_front(lines: list[dict], objective: Objective) -> set[str]:
    """Hashes of the feasible archs no other feasible arch dominates (O(n^2), no Optuna)."""
    ok = [r for r in lines if r["status"] == "ok" and r["feasible"]]
    signs = np.array([1.0 if d == "max" else -1.0 for d in objective.metrics.values()])
    gain = np.array([[r["metrics"][m] for m in objective.metrics] for r in ok]) * signs  # higher is better
    dominated = [bool(np.any(np.all(gain >= g, axis=1) & np.any(gain > g, axis=1))) for g in gain]
    return {r["hash"] for r, d in zip(ok, dominated, strict=True) if not d}


def _feasible_points(lines: list[dict], objective: Objective, upto: int | None = None) -> np.ndarray:
    return np.array([[r["metrics"][m] for m in objective.metrics] for r in lines[:upto]
                     if r["status"] == "ok" and r["feasible"]]).reshape(-1, len(objective.metrics))


def _assert_png(path: str | Path) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # the IHDR chunk
    assert data[12:16] == b"IHDR" and width > 100 and height > 100, f"{path}: {width}x{height}"


@pytest.mark.parametrize("objective", [PARETO, PARETO3], ids=["2 metrics", "3 metrics"])
def test_the_front_is_exactly_the_nondominated_feasible_archs(tmp_path: Path, objective: Objective) -> None:
    lines = _write_run(tmp_path / "run", objective, 400)
    report = write_search_report(tmp_path / "run")
    hashes = [row[report.columns.index("arch")] for row in report.rows]
    assert report.kind == "pareto"
    assert len(hashes) == len(set(hashes)), "each arch once"
    assert set(hashes) == _brute_front(lines, objective)
    accuracies = [row[report.columns.index("accuracy")] for row in report.rows]
    assert accuracies == sorted(accuracies, reverse=True), "best first metric first"
    by_hash = {r["hash"]: r for r in lines}
    for row in report.rows:  # each row shows its own arch's trial and metrics
        record = by_hash[row[report.columns.index("arch")]]
        assert row[report.columns.index("trial")] == record["trial"]
        assert all(row[report.columns.index(m)] == record["metrics"][m] for m in ("accuracy", "latency_ms", "params"))
    assert report.n_trials == 400 and report.n_ok == 400 - 400 // 17
    assert report.n_feasible == sum(r.get("feasible", False) for r in lines)


@pytest.mark.parametrize("objective", [PARETO, PARETO3], ids=["2 metrics", "3 metrics"])
def test_the_hypervolume_curve_is_the_hypervolume_of_the_archs_seen_so_far(tmp_path: Path,
                                                                           objective: Objective) -> None:
    n = 450  # more lines than checkpoints: each checkpoint covers several trials
    lines = _write_run(tmp_path / "run", objective, n)
    report = write_search_report(tmp_path / "run")
    dirs = tuple(objective.metrics.values())
    trials = report.curve.trials
    (name, volumes), = report.curve.series
    assert name == "hypervolume" and trials[-1] == n and len(trials) <= 201 and list(trials) == sorted(set(trials))
    assert all(b >= a for a, b in zip(volumes, volumes[1:], strict=False)), "non-decreasing"
    every = _feasible_points(lines, objective)
    reference = [v for _, v in report.reference]
    assert volumes[-1] == pytest.approx(hypervolume(every, dirs, reference), rel=1e-12)
    for t, volume in list(zip(trials, volumes, strict=True))[::20]:
        seen = _feasible_points(lines, objective, upto=t)
        assert volume == pytest.approx(hypervolume(seen, dirs, reference) if len(seen) else 0.0, rel=1e-12, abs=0)
    # the reference: the nadir of the feasible archs, 10% of each metric's range further out
    worst = np.where(np.array(dirs) == "max", every.min(axis=0), every.max(axis=0))
    span = every.max(axis=0) - every.min(axis=0)
    assert reference == pytest.approx(worst + np.where(np.array(dirs) == "max", -0.1, 0.1) * span)


def test_reference_point_and_curve_edge_cases() -> None:
    same = np.array([[0.5, 2.0], [0.5, 2.0]])  # every arch agrees: pad by 10% of the value
    assert reference_point(same, ["max", "min"]).tolist() == pytest.approx([0.45, 2.2])
    assert reference_point(np.array([[0.0, 0.0]]), ["max", "min"]).tolist() == pytest.approx([-0.1, 0.1])
    points = np.array([[0.9, 5.0], [0.5, 1.0], [0.95, 9.0]])
    trials, volumes, front = hypervolume_curve(points, np.array([3, 3, 7]), 10, ["max", "min"], [0.0, 10.0],
                                               checkpoints=5)
    assert trials.tolist() == [2, 4, 6, 8, 10]
    two, three = (hypervolume(points[:k], ["max", "min"], [0.0, 10.0]) for k in (2, 3))
    assert volumes.tolist() == pytest.approx([0.0, two, two, three, three])
    assert sorted(front.tolist()) == [0, 1, 2]


def test_pngs_and_report_json_are_written_atomically(tmp_path: Path) -> None:
    _write_run(tmp_path / "run", PARETO, 120)
    report = write_search_report(tmp_path / "run")
    names = sorted(Path(p).name for p in report.plots)
    assert names == ["hypervolume.png", "pareto_accuracy_latency_ms.png", "pareto_accuracy_params.png"]
    for path in report.plots:
        _assert_png(path)
    out = tmp_path / "run" / "report"
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    stored = json.loads((out / "report.json").read_text())
    assert stored == json.loads(json.dumps(report.to_dict()))
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "report.json"])


def test_a_scalar_run_reports_best_so_far_and_its_best_archs(tmp_path: Path) -> None:
    lines = _write_run(tmp_path / "run", SCALAR, 300)
    report = write_search_report(tmp_path / "run")
    assert report.kind == "scalar" and report.reference is None
    running, best = {}, -np.inf  # trial count -> best feasible accuracy, at every line where it rose
    for i, r in enumerate(lines, 1):
        if r["status"] == "ok" and r["feasible"] and r["score"] > best:
            best = running[i] = r["score"]
    curve = dict(zip(report.curve.trials, report.curve.series[0][1], strict=True))
    assert {t: v for t, v in curve.items() if t in running} == running
    assert set(curve) == {*running, len(lines)} and curve[len(lines)] == best
    ok = sorted((r for r in lines if r["status"] == "ok"), key=lambda r: (not r["feasible"], -r["score"]))
    assert [row[report.columns.index("arch")] for row in report.rows] == [r["hash"] for r in ok[:10]]
    assert [row[0] for row in report.rows] == list(range(1, 11))
    assert sorted(Path(p).name for p in report.plots) == ["accuracy_latency_ms.png", "best_so_far.png"]
    for path in report.plots:
        _assert_png(path)


def test_a_real_search_without_ray_is_reported_with_its_evaluators_default_metric(lut_path: Path,
                                                                                  tmp_path: Path) -> None:
    from nas.plan import plan_search
    from nas.trials import Search

    config = RunConfig(space="proxylessnas", strategy="evolution", evaluator="lut", trials=30, archs_per_trial=5,
                       hardware=str(lut_path), objective=Objective(mode="min"))  # metric None: lut's macs
    plan = plan_search(config)
    with RunDir(tmp_path) as rd:
        rd.write_config(plan.stored_config())
        search = Search(plan, rd)
        search.start()
        while not search.should_stop:
            archs = search.next_batch()
            search.record(archs, {"results": [{"metrics": {**plan.space.cost(a), "latency_ms": 1.0 + k}}
                                              for k, a in enumerate(archs)], "node": "n", "host": "h", "pid": 1})
        records = rd.read_trials()
    report = write_search_report(tmp_path)
    assert report.objective == "min macs"
    smallest = min(r["metrics"]["macs"] for r in records)
    assert report.rows[0][report.columns.index("macs")] == smallest
    assert dict(report.curve.series)["macs of the best arch"][-1] == smallest
    assert report.curve.trials[-1] == len(records) == 30
    assert write_search_report(tmp_path, records) == report  # the runner's call: records already in memory


def test_a_run_in_progress_is_reported(tmp_path: Path) -> None:
    run = tmp_path / "run"
    lines = _write_run(run, PARETO, 50, budget=1000)
    with open(run / "trials.jsonl", "a") as handle:
        handle.write('{"trial": 50, "arch": {"spa')  # a line being written, or torn by a kill
    report = write_search_report(run)
    assert report.n_trials == 50 and report.budget == 1000
    assert any("50 of 1,000 trials recorded" in note for note in report.notes)
    assert {row[2] for row in report.rows} == _brute_front(lines, PARETO)


def test_a_run_without_a_feasible_arch_says_so(tmp_path: Path) -> None:
    objective = Objective(kind="pareto", metrics={"accuracy": "max", "latency_ms": "min"}, max_latency_ms=0.5)
    _write_run(tmp_path / "run", objective, 40)
    report = write_search_report(tmp_path / "run")
    assert report.rows == () and report.reference is None and report.curve.series[0][1] == (None,)
    assert any("no feasible arch" in note for note in report.notes)
    assert sorted(Path(p).name for p in report.plots) == ["pareto_accuracy_latency_ms.png",
                                                          "pareto_accuracy_params.png"]


def test_a_full_disk_leaves_every_plot_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    _write_run(run, PARETO, 60)
    write_search_report(run)
    before = {p.name: p.read_bytes() for p in (run / "report").iterdir()}
    _write_run(run, PARETO, 90, seed=1)  # another log: every plot changes
    real_fdopen, opened = os.fdopen, []

    class _Full:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            self.handle.write(data[: len(data) // 2])  # half written, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fdopen(fd, *args, **kwargs):
        handle = real_fdopen(fd, *args, **kwargs)
        opened.append(fd)
        return _Full(handle) if len(opened) == 2 else handle  # the second plot hits the full disk

    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(DiskFullError, match="disk full"):
        write_search_report(run)
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in (run / "report").iterdir()}
    assert set(after) == set(before), "no temp file left behind"
    changed = [name for name in after if after[name] != before[name]]
    assert changed == ["hypervolume.png"], "the first plot was replaced whole, the rest kept"
    for name in after:
        if name.endswith(".png"):
            _assert_png(run / "report" / name)
    write_search_report(run)  # with space again, the report is complete
    assert all((run / "report" / name).read_bytes() != before[name] for name in before)


def test_a_report_dir_that_cannot_be_made_is_one_user_error(tmp_path: Path) -> None:
    _write_run(tmp_path / "run", PARETO, 20)
    (tmp_path / "run" / "report").write_text("not a dir")
    with pytest.raises(UserError, match=r"cannot write report/") as err:
        write_search_report(tmp_path / "run")
    assert "\n" not in str(err.value)


def _report_app() -> typer.Typer:
    from nas.cli_report import report

    app = typer.Typer()
    app.command()(report)
    app.callback()(lambda: None)  # a group, as in `nas report ...`
    return app


def test_the_cli_prints_the_front_table_the_curve_and_the_plots(tmp_path: Path) -> None:
    lines = _write_run(tmp_path / "run", PARETO, 100)
    result = CliRunner().invoke(_report_app(), ["report", "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    for arch in _brute_front(lines, PARETO):
        assert arch[:12] in result.output
    assert "after 100 trials: hypervolume " in result.output
    assert result.output.count("plot: ") == 3
    shown = CliRunner().invoke(_report_app(), ["report", "--run-dir", str(tmp_path / "run"), "--json"])
    data = json.loads(shown.output)
    assert {row[2] for row in data["rows"]} == _brute_front(lines, PARETO)
    headers, cells = format_rows(Report(**{**data, "curve": None}))
    assert "latency ms" in headers and all(len(c[headers.index("arch")]) == 12 for c in cells)


_CLI = r"""
import contextlib, io, json, sys
import nas.cli
from nas.cli_report import report
if not any(c.callback is report for c in nas.cli.app.registered_commands):  # the lead registers it in nas/cli.py
    nas.cli.app.command()(report)
results = []
for run_dir in sys.argv[1:]:
    err = io.StringIO()
    sys.argv = ["nas", "report", "--run-dir", run_dir]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            nas.cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


def test_bad_input_is_one_line_with_exit_2_and_nothing_written(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("x")
    _write_run(tmp_path / "no_trials", PARETO, 1)
    (tmp_path / "no_trials" / "trials.jsonl").write_text("")
    _write_run(tmp_path / "bad_config", PARETO, 3)
    (tmp_path / "bad_config" / "config.yaml").write_text("trials: 3\nobjective: {kind: pareto}\n")
    _write_run(tmp_path / "no_config", PARETO, 3)
    (tmp_path / "no_config" / "config.yaml").unlink()
    cases = {"missing": "does not exist", "empty": "no config.yaml", "a_file": "is not a directory",
             "no_trials": "no trial recorded yet", "bad_config": "pareto objective needs two or more",
             "no_config": "but no config.yaml"}
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    proc = subprocess.run([sys.executable, "-c", _CLI, *(str(tmp_path / name) for name in cases)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for (name, expected), (code, stderr) in zip(cases.items(), json.loads(proc.stdout), strict=True):
        assert code == 2, f"{name}: exit {code}, stderr {stderr!r}"
        assert stderr.count("\n") == 1 and stderr.startswith("error: "), f"{name}: {stderr!r}"
        assert expected in stderr, f"{name}: {stderr!r}"
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before, "nothing written"

"""Tampered run dirs: every value read back is checked before use, and anything no search writes is refused
with one `UserError` line naming the file, the line, the field and the bad value, with nothing changed.

Each class of damage a security tester found has generated variants: a junk value in every field of every
kind of trial line, repeated archs, every kind of bad `n_recorded`, a deleted config, sparse gigabyte
files, and directories that are not run dirs. A real run dir (built without Ray by `Search`, killed
between its log append and its state save) is the base, and the undamaged base must resume.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from nas.config import Objective, RunConfig
from nas.errors import UserError, shorten
from nas.plan import SearchPlan, plan_search
from nas.run_dir import RunDir, arch_hash
from nas.trials import Search
from tests.cli_harness import assert_user_error, run_cli, snapshot, warm_cli  # noqa: F401  (fixture)

_WHERE = {"node": "n", "host": "h", "pid": 1}
_GB3 = 3 << 30


def _config(lut_path: Path, trials: int = 40) -> RunConfig:
    return RunConfig(space="proxylessnas", strategy="evolution", evaluator="lut", trials=trials, archs_per_trial=5,
                     hardware=str(lut_path), objective=Objective(metric="macs"))


def _ok(search: Search, archs: list) -> dict:
    return {"results": [{"metrics": {**search.plan.space.cost(a), "latency_ms": 1.5}} for a in archs], **_WHERE}


def _build_run(run: Path, plan: SearchPlan) -> None:
    """What a killed search leaves: 4 ok lines, a failed arch (3 attempts), 10 ok lines, then 5 lines recorded
    after the last state save (n_recorded 15) and 5 more archs in flight."""
    with RunDir(run) as rd:
        rd.write_config(plan.stored_config())
        search = Search(plan, rd)
        search.start()
        archs = search.next_batch()
        search.record(archs, {"results": [{"error": "ValueError: boom"}] + _ok(search, archs[1:])["results"],
                              **_WHERE})
        for _ in range(2):
            search.record(retry := search.next_batch(), {"results": [{"error": "ValueError: boom"}], **_WHERE})
            assert len(retry) == 1
        for _ in range(2):
            search.record(archs := search.next_batch(), _ok(search, archs))
        recorded_later, _in_flight = search.next_batch(), search.next_batch()
        saved = rd.state_path.read_bytes()
        search.record(recorded_later, _ok(search, recorded_later))
    (run / "strategy.json").write_bytes(saved)


@pytest.fixture(scope="module")
def plan(lut_path: Path) -> SearchPlan:
    return plan_search(_config(lut_path))


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory, plan: SearchPlan) -> Path:
    run = tmp_path_factory.mktemp("base") / "run"
    _build_run(run, plan)
    return run


@pytest.fixture
def run(base_run: Path, tmp_path: Path) -> Path:
    """A fresh copy of the base run dir for one test to damage."""
    return Path(shutil.copytree(base_run, tmp_path / "run"))


def _resume(run: Path, plan: SearchPlan) -> Search:
    """What `run_search` does before Ray starts: take the run dir, check the config, restore the search."""
    with RunDir(run) as rd:
        rd.check_config(plan.stored_config(), ignore=("hardware", "latency_table"))
        return Search(plan, rd)


def _refused(run: Path, plan: SearchPlan, *needles: str) -> str:
    """Resuming raises one `UserError` line holding every needle, and changes no file."""
    before = snapshot(run)
    with pytest.raises(UserError) as err:
        _resume(run, plan)
    message = str(err.value)
    assert "\n" not in message and len(message) < 1000, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert snapshot(run) == before
    return message


def _lines(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()]


def _write_lines(run: Path, records: list[dict[str, Any]]) -> None:
    # A tamperer's JSON: NaN and Infinity literals allowed, any key order.
    (run / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _edit_line(run: Path, index: int, change: Callable[[dict[str, Any]], Any]) -> None:
    records = _lines(run)
    change(records[index])
    _write_lines(run, records)


def _line_of(run: Path, kind: str) -> int:
    """Index of a line of `kind`: `ok` (before n_recorded), `failed`, `later` (recorded after the state save)."""
    records = _lines(run)
    n_recorded = json.loads((run / "strategy.json").read_text())["n_recorded"]
    if kind == "later":
        return n_recorded + 1
    return next(i for i, r in enumerate(records[:n_recorded]) if r["status"] == kind and i)


def test_the_undamaged_base_resumes(run: Path, plan: SearchPlan) -> None:
    records = _lines(run)
    assert len(records) == 20 and [r["status"] for r in records].count("failed") == 1
    search = _resume(run, plan)
    assert len(search.records) == 20 and len(search.retry) == 5  # the 5 archs still in flight run again


# -- 1. every field of every line: type and range ----------------------------------------------------------

def _set(field: str, value: Any) -> Callable[[dict], None]:
    return lambda r: r.__setitem__(field, value)


def _set_metric(name: str, value: Any) -> Callable[[dict], None]:
    return lambda r: r["metrics"].__setitem__(name, value)


def _rehash(change: Callable[[dict], None]) -> Callable[[dict], None]:
    """Change the arch and fix its hash, as a careful tamperer would."""
    def apply(record: dict) -> None:
        change(record["arch"])
        record["hash"] = arch_hash(record["arch"])
    return apply


@pytest.mark.parametrize(("kind", "change", "needles"), [
    ("ok", _set("score", "abc"), ["score is 'abc'", "a finite number"]),
    ("ok", _set("score", None), ["score is None"]),
    ("ok", _set("score", float("nan")), ["score is nan"]),
    ("ok", _set("score", float("inf")), ["score is inf"]),
    ("ok", _set("score", True), ["score is True"]),
    ("later", _set("score", "abc"), ["score is 'abc'"]),
    ("ok", _set_metric("macs", "abc"), ["metrics.macs is 'abc'", "a finite number"]),
    ("ok", _set_metric("macs", True), ["metrics.macs is True"]),
    ("ok", _set_metric("latency_ms", float("nan")), ["metrics.latency_ms is nan"]),
    ("ok", _set_metric("macs", -1), ["metrics.macs is -1", "an integer from 0"]),
    ("ok", _set_metric("macs", 1.5), ["metrics.macs is 1.5", "an integer"]),
    ("ok", _set_metric("params", None), ["metrics.params is null", "needs its value"]),
    ("ok", _set_metric("accuracy", 2.0), ["metrics.accuracy is 2.0", "from 0 to 1"]),
    ("ok", _set_metric("latency_ms", -0.5), ["metrics.latency_ms is -0.5"]),
    ("ok", _set_metric("x" * 200, 1), ["metric name 'xxx", "1 to 100 characters"]),
    ("later", lambda r: r["metrics"].pop("macs"), ["metrics.macs is missing"]),
    ("ok", _set("metrics", "abc"), ["metrics is 'abc'"]),
    ("ok", _set("metrics", [1, 2]), ["metrics is [1, 2]"]),
    ("ok", _set("status", "done"), ["status is 'done'", "'failed', 'ok'"]),
    ("ok", _set("status", ["ok"]), ["status is ['ok']"]),
    ("ok", lambda r: r.pop("status"), ["lacks field status"]),
    ("ok", _set("feasible", "yes"), ["feasible is 'yes'", "true or false"]),
    ("ok", _set("feasible", False), ["feasible is False", "keep the objective's bounds"]),
    ("ok", lambda r: r.pop("score"), ["lacks field score"]),
    ("ok", _set("error", "boom"), ["unknown field 'error'"]),
    ("ok", _set("violations", {}), ["unknown field 'violations'"]),
    ("ok", _set("extra", 1), ["unknown field 'extra'"]),
    ("failed", _set("error", 5), ["error is 5", "a message of at most 500"]),
    ("failed", _set("error", "e" * 501), ["error is 'eee", "(501 chars)"]),
    ("failed", _set("metrics", {"macs": 1}), ["metrics is {'macs': 1}", "a failed arch has no metrics"]),
    ("failed", _set("score", 1.0), ["score is 1.0", "null"]),
    ("failed", _set("feasible", True), ["unknown field 'feasible'"]),
    ("failed", lambda r: r.pop("error"), ["lacks field error"]),
    ("ok", _set("trial", "1"), ["trial is '1'"]),
    ("ok", _set("trial", True), ["trial is True"]),
    ("ok", _set("hash", "abc"), ["hash is 'abc'", "64 lowercase hex"]),
    ("ok", _set("node", 5), ["node is 5"]),
    ("ok", _set("host", ["h"]), ["host is ['h']"]),
    ("ok", _set("pid", -1), ["pid is -1"]),
    ("ok", _set("pid", "1"), ["pid is '1'"]),
    ("ok", _set("finished_at", "yesterday"), ["finished_at is 'yesterday'", "ISO 8601"]),
    ("ok", _set("finished_at", "2026-01-01T00:00:00"), ["finished_at is", "with a zone"]),
    ("ok", _set("arch", "x"), ["arch is 'x'"]),
    ("ok", lambda r: r["arch"]["choices"].__setitem__("s1.b1.op", "mb9_k9"), ["does not match its hash"]),
    ("ok", _rehash(lambda a: a.__setitem__("space", "other")), ["arch is of space 'other'"]),
    ("ok", _rehash(lambda a: a["choices"].__setitem__(sorted(a["choices"])[0], "mb9_k9")),
     ["arch choice", "is 'mb9_k9'; allowed:"]),
    ("later", _rehash(lambda a: a["choices"].pop(sorted(a["choices"])[0])), ["arch decision", "is missing"]),
    ("ok", _rehash(lambda a: a["config"].__setitem__("width_mult", 2.0)), ["arch is of space 'proxylessnas' with"]),
])
def test_a_bad_field_is_refused_naming_line_field_and_value(run: Path, plan: SearchPlan, kind: str, change,
                                                             needles: list[str]) -> None:
    index = _line_of(run, kind)
    _edit_line(run, index, change)
    _refused(run, plan, "trials.jsonl", f"line {index + 1}: ", *needles)


_JUNK = [None, True, -1, 1.5, "abc", [], {}, "x" * 5000, 10**30]
_HARMLESS = {("node", "None"), ("host", "None"), ("pid", "None"), ("node", "'abc'"), ("host", "'abc'"),
             ("score", "-1"), ("score", "1.5"), ("error", "'abc'"), ("metrics.latency_ms", "None")}
"""(field, junk) pairs a search could have written itself: accepted (a score or a feasible flag that differ from
the written one are checked only where the search depends on them)."""


@pytest.mark.parametrize("kind", ["ok", "failed", "later"])
def test_junk_in_any_field_is_refused_or_harmless(run: Path, plan: SearchPlan, kind: str) -> None:
    """Every field (and metric) of a line, set to each junk value: a one-line refusal naming the line, or a
    value a search could have written; never another exception."""
    index = _line_of(run, kind)
    original = (run / "trials.jsonl").read_bytes()
    record = _lines(run)[index]
    values = {**record, **{f"metrics.{m}": v for m, v in record["metrics"].items()}}
    for field, value in values.items():
        for junk in _JUNK:
            if field.startswith("metrics."):
                _edit_line(run, index, _set_metric(field.removeprefix("metrics."), junk))
            else:
                _edit_line(run, index, _set(field, junk))
            case = f"{kind} line {index + 1}, {field} = {shorten(junk)}"
            try:
                _resume(run, plan)
            except UserError as err:
                assert "\n" not in str(err) and f"line {index + 1}" in str(err), f"{case}: {err}"
            else:
                same = type(junk) is type(value) and junk == value
                assert same or (field, repr(junk)) in _HARMLESS, f"{case}: accepted"
            (run / "trials.jsonl").write_bytes(original)


# -- 2. repeated archs and a bad n_recorded ----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["ok", "failed", "later"])
def test_an_arch_appended_twice_is_refused(run: Path, plan: SearchPlan, kind: str) -> None:
    records = _lines(run)
    index = _line_of(run, kind)
    _write_lines(run, [*records, {**records[index], "trial": len(records)}])
    _refused(run, plan, f"line {len(records) + 1}: arch {records[index]['hash'][:12]} recorded again "
             f"(first on line {index + 1})")


def test_an_arch_repeated_in_the_middle_with_renumbered_trials_is_refused(run: Path, plan: SearchPlan) -> None:
    records = _lines(run)
    damaged = records[:3] + [records[1]] + records[3:]
    _write_lines(run, [{**r, "trial": i} for i, r in enumerate(damaged)])
    _refused(run, plan, "line 4: arch", "recorded again (first on line 2)")


def _set_state(run: Path, change: Callable[[dict], Any]) -> None:
    state = json.loads((run / "strategy.json").read_text())
    change(state)
    (run / "strategy.json").write_text(json.dumps(state))


@pytest.mark.parametrize(("value", "needles"), [
    (-1, ["strategy.json: n_recorded is -1", "an integer from 0"]),
    (True, ["strategy.json: n_recorded is True"]),
    (15.0, ["strategy.json: n_recorded is 15.0"]),
    ("15", ["strategy.json: n_recorded is '15'"]),
    (None, ["strategy.json: n_recorded is None"]),
    (10**30, ["strategy.json: n_recorded is 1000000000000000000000000000000"]),
    (2**62, ["trials.jsonl has 20 trials but 4611686018427387904 were recorded", "are missing"]),
    (21, ["trials.jsonl has 20 trials but 21 were recorded"]),
    (0, ["trials.jsonl: line 1 records arch", "never asked for", "n_recorded is too small"]),
    (14, ["trials.jsonl: line 15 records arch", "never asked for"]),
    (16, ["strategy.json has arch", "in flight, but line 16", "n_recorded (16) is too large"]),
    (20, ["strategy.json has arch", "in flight, but line 16"]),
])
def test_a_bad_n_recorded_is_refused(run: Path, plan: SearchPlan, value: Any, needles: list[str]) -> None:
    _set_state(run, lambda s: s.__setitem__("n_recorded", value))
    _refused(run, plan, *needles)


@pytest.mark.parametrize(("change", "needles"), [
    (lambda s: s.__setitem__("strategy", []), ["strategy is []"]),
    (lambda s: s.__setitem__("extra", 1), ["not a strategy state", "extra"]),
    (lambda s: s.pop("strategy"), ["not a strategy state"]),
    (lambda s: s["strategy"].__setitem__("n_asked", "x"), ["strategy.n_asked is 'x'"]),
    (lambda s: s["strategy"].__setitem__("n_told", -1), ["strategy.n_told is -1"]),
    (lambda s: s["strategy"].__setitem__("n_told", True), ["strategy.n_told is True"]),
    (lambda s: s["strategy"].__setitem__("n_asked", 0), ["strategy.pending is", "at most n_asked - n_told"]),
    (lambda s: s["strategy"].__setitem__("pending", "x"), ["strategy.pending is 'x'"]),
    (lambda s: s["strategy"].__setitem__("rng", "x"), ["does not hold a state of strategy evolution"]),
    (lambda s: s["strategy"]["pending"][0].__setitem__("space", "nope"), ["state of strategy evolution"]),
    (lambda s: s["strategy"]["pending"][0]["choices"].clear(), ["state of strategy evolution"]),
    (lambda s: s["strategy"]["population"][0].__setitem__(1, float("nan")), ["holds NaN or Infinity"]),
    (lambda s: s["strategy"]["rng"].__setitem__("x", float("-inf")), ["holds NaN or Infinity"]),
])
def test_a_bad_strategy_state_is_refused(run: Path, plan: SearchPlan, change, needles: list[str]) -> None:
    _set_state(run, change)
    _refused(run, plan, "strategy.json", *needles)


def test_the_word_nan_in_a_state_string_is_no_number(run: Path, plan: SearchPlan) -> None:
    _set_state(run, lambda s: s["strategy"]["rng"].__setitem__("note", "NaN and Infinity"))
    assert len(_resume(run, plan).records) == 20


def test_more_lines_than_the_budget_are_refused(run: Path, lut_path: Path) -> None:
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "trials": 19}))  # the budget edited down
    _refused(run, plan_search(_config(lut_path, trials=19)), "trials.jsonl has 20 trial lines, more than the "
             "budget of 19")


# -- 3. a deleted config does not hand the run dir to another search ---------------------------------------

@pytest.mark.parametrize("keep", ["trials.jsonl", "strategy.json", "best.json", "tune"])
def test_a_run_dir_without_its_config_is_not_taken_over(run: Path, plan: SearchPlan, lut_path: Path,
                                                        keep: str) -> None:
    (run / "best.json").write_text("[]")
    (run / "tune").mkdir()
    for name in ("config.yaml", *({"trials.jsonl", "strategy.json", "best.json"} - {keep})):
        (run / name).unlink()
    if keep != "tune":
        (run / "tune").rmdir()
    other = plan_search(_config(lut_path).model_copy(update={"seed": 9}))
    _refused(run, other, f"holds {keep} but no config.yaml", "not taken over", "choose another --run-dir")


def test_a_run_dir_with_only_its_lock_is_new(tmp_path: Path) -> None:
    (tmp_path / ".lock").write_text("")
    with RunDir(tmp_path) as rd:
        assert rd.read_config() is None


@pytest.mark.parametrize(("change", "needles"), [
    (lambda c: c.__setitem__("trials", "abc"), ["trials is 'abc'", "a positive integer"]),
    (lambda c: c.__setitem__("trials", True), ["trials is True"]),
    (lambda c: c.__setitem__("trials", 0), ["trials is 0"]),
    (lambda c: c.pop("trials"), ["trials is None"]),
    (lambda c: c.__setitem__("hardware", 5), ["hardware is 5"]),
    (lambda c: c.__setitem__("latency_table", "x"), ["latency_table is 'x'"]),
    (lambda c: c["latency_table"].__setitem__("sha256", "zz"), ["latency_table is", "64 hex digits"]),
])
def test_a_bad_stored_config_is_refused(run: Path, plan: SearchPlan, change, needles: list[str]) -> None:
    config = yaml.safe_load((run / "config.yaml").read_text())
    change(config)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    _refused(run, plan, "config.yaml", *needles)


# -- 4. huge files fail fast, on their first bad line --------------------------------------------------------

def _refused_fast(run: Path, plan: SearchPlan, *needles: str) -> None:
    """Refused within a second, no file changed (compared by size and mtime: reading them back would be slow)."""
    def stats() -> dict[str, tuple[int, int]]:
        return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in run.iterdir() if p.name != ".lock"}

    before = stats()
    start = time.perf_counter()
    with pytest.raises(UserError) as err:
        _resume(run, plan)
    took = time.perf_counter() - start
    assert took < 1.0, f"{took:.1f} s: {err.value}"
    assert "\n" not in str(err.value) and all(n in str(err.value) for n in needles), str(err.value)
    assert stats() == before


def test_a_sparse_3gb_log_fails_on_its_first_line(run: Path, plan: SearchPlan) -> None:
    (run / "trials.jsonl").unlink()
    (run / "trials.jsonl").touch()
    os.truncate(run / "trials.jsonl", _GB3)
    _refused_fast(run, plan, "trials.jsonl: line 1: longer than 1048576 bytes")


def test_a_sparse_3gb_tail_fails_on_the_first_bad_line(run: Path, plan: SearchPlan) -> None:
    log = run / "trials.jsonl"
    os.truncate(log, log.stat().st_size + _GB3)
    _refused_fast(run, plan, "trials.jsonl: line 21: longer than")


def test_a_line_one_byte_over_the_limit_is_refused(run: Path, plan: SearchPlan) -> None:
    with open(run / "trials.jsonl", "ab") as handle:
        handle.write(b" " * (1 << 20) + b"{}\n")
    _refused_fast(run, plan, "line 21: longer than 1048576 bytes")


@pytest.mark.parametrize(("name", "needles"), [
    ("strategy.json", ["strategy.json: larger than"]),
    ("config.yaml", ["config.yaml: larger than"]),
])
def test_a_sparse_3gb_state_or_config_is_refused_unread(run: Path, plan: SearchPlan, name: str,
                                                         needles: list[str]) -> None:
    os.truncate(run / name, _GB3)
    _refused_fast(run, plan, *needles)


# -- 5. a directory that is not a run dir is not taken ---------------------------------------------------------

@pytest.mark.parametrize("where", ["other files", "root", "repo"])
def test_a_directory_that_is_not_a_run_dir_is_refused_before_any_write(tmp_path: Path, where: str) -> None:
    path = {"other files": tmp_path, "root": Path("/"), "repo": Path(__file__).resolve().parents[1]}[where]
    (tmp_path / "notes.txt").write_text("mine")
    before = sorted(os.listdir(path))
    with pytest.raises(UserError, match=r"exists and is not a run dir \(it holds other files, e\.g\. .*\); "
                                        "choose an empty or new directory"):
        RunDir(path).__enter__()
    assert sorted(os.listdir(path)) == before


def test_an_empty_path_or_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--run-dir '': an empty path"):
        RunDir("")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="exists and is not a directory"):
        RunDir(tmp_path / "file").__enter__()
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize("leftover", [None, ".lock", ".write-probe", ".config.yaml.999999.abc.tmp"])
def test_a_new_or_empty_directory_or_one_a_killed_search_left_is_taken(tmp_path: Path, leftover: str | None) -> None:
    path = tmp_path / "run"
    if leftover is not None:
        path.mkdir()
        (path / leftover).write_text("")
    with RunDir(path) as rd:
        assert rd.read_trials() == [] and rd.read_config() is None


# -- the CLI: one line, exit 2, nothing changed -----------------------------------------------------------------

def _cli_args(lut_path: Path, run: Path | str) -> list[str | Path]:
    return ["search", "--evaluator", "lut", "--hardware", lut_path, "--trials", "40", "--archs-per-trial", "5",
            "--metric", "macs", "--run-dir", run]


@pytest.mark.slow  # a warm CLI starts in about 10 s
def test_cli_refuses_an_edited_score_and_non_run_dirs(warm_cli, lut_path: Path, tmp_path: Path,  # noqa: F811
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from nas.config import merge_run_config

    flags = {"evaluator": "lut", "hardware": str(lut_path), "trials": 40, "archs_per_trial": 5,
             "objective.metric": "macs"}
    run = tmp_path / "run"
    _build_run(run, plan_search(merge_run_config(None, flags)))
    index = _line_of(run, "ok")
    _edit_line(run, index, _set("score", "abc"))
    before = snapshot(run)
    assert_user_error(run_cli(*_cli_args(lut_path, run)), "trials.jsonl", f"line {index + 1}", "score is 'abc'")
    assert snapshot(run) == before
    assert_user_error(run_cli(*_cli_args(lut_path, "/")), "run dir / exists and is not a run dir")
    monkeypatch.chdir(tmp_path)  # not empty: holds run/
    assert_user_error(run_cli(*_cli_args(lut_path, "")), "--run-dir", "empty")  # the CLI or RunDir refuses it
    assert sorted(os.listdir(tmp_path)) == ["run"]

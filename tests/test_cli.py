"""The `nas` command on bad input: one line on stderr naming the problem, exit 2, nothing damaged.

Every case fails before Ray starts; commands run in a warm interpreter (`tests.cli_harness`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.cli_harness import assert_user_error, run_cli
from tests.cli_harness import snapshot as _snapshot

pytestmark = pytest.mark.usefixtures("warm_cli", "in_tmp_dir")


# -- latency tables and archs ---------------------------------------------------------------

@pytest.fixture(scope="module")
def table_data() -> dict:
    """A latency table (as plain data) covering every key of the default proxylessnas config."""
    from nas.hardware.table import Entry, LatencyTable, Metadata, TableFile
    from nas.space import load_space

    space = load_space("proxylessnas")
    entries = {k: Entry(mean=0.1, std=0.0, count=1) for k in space.all_latency_keys()}
    meta = Metadata(space="proxylessnas", space_config=space.config.model_dump(mode="json"), device_id="synthetic",
                    backend="cpu", hardware="synthetic", batch=1, dtype="fp32", threads=1, versions={},
                    measured_at="2026-01-01")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.yaml"
        LatencyTable(TableFile(metadata=meta, entries=entries)).save(path)
        return yaml.safe_load(path.read_text())


@pytest.fixture
def table(table_data: dict, tmp_path: Path) -> Path:
    path = tmp_path / "proxylessnas-r32.yaml"
    path.write_text(yaml.safe_dump(table_data, sort_keys=True))
    return path


@pytest.fixture(scope="module")
def tiny_arch() -> dict:
    from nas.space import find_preset

    return find_preset("proxylessnas_tiny").to_dict()


def _search_lut(table: Path, run_dir: Path, *more: str | Path) -> subprocess.CompletedProcess:
    return run_cli("search", "--evaluator", "lut", "--hardware", table, "--trials", "3", "--run-dir", run_dir, *more)


# -- names: spaces, strategies, evaluators, presets, devices ----------------------------------

@pytest.mark.parametrize("args", [["search", "--space", "nope"], ["spaces", "nope"], ["profile", "--space", "nope"]])
def test_unknown_space_names_the_known_ones(args: list[str]) -> None:
    assert_user_error(run_cli(*args), "unknown space", "nope", "proxylessnas")


@pytest.mark.parametrize(("args", "needles"), [
    (["search", "--strategy", "nope"], ["unknown strategy", "evolution", "random"]),
    (["search", "--evaluator", "nope"], ["unknown evaluator", "lut", "train"]),
    (["spaces", "--preset", "nope"], ["unknown preset", "proxyless_mobile", "proxylessnas_tiny"]),
    (["export", "--preset", "nope"], ["unknown preset", "proxyless_mobile", "proxylessnas_tiny"]),
    (["profile", "--device", "tpu"], ["unknown device", "tpu", "cpu", "onnxruntime", "cuda"]),
])
def test_unknown_name_lists_the_allowed_values(args: list[str], needles: list[str]) -> None:
    assert_user_error(run_cli(*args), "nope" if "nope" in args else "tpu", *needles)


def test_cuda_device_without_a_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    assert_user_error(run_cli("profile", "--device", "cuda", "--out", "t.yaml"), "cuda", "cpu")
    assert not Path("t.yaml").exists()


@pytest.mark.parametrize(("args", "needles"), [
    (["--dtype", "fp16"], ["--dtype", "fp16", "device 'cpu'", "fp32"]),
    (["--dtype", "int3", "--device", "onnxruntime"], ["--dtype", "int3", "fp32"]),
    (["--device", "onnxruntime_cuda"], ["onnxruntime_cuda", "CUDAExecutionProvider", "cpu, onnxruntime"]),
])
def test_profile_refuses_what_this_machine_cannot_time(args: list[str], needles: list[str]) -> None:
    assert_user_error(run_cli("profile", *args, "--out", "t.yaml"), *needles)
    assert not Path("t.yaml").exists()


@pytest.mark.parametrize("kind", ["truncated", "other_space", "other_batch"])
def test_profile_validate_refuses_a_bad_table_and_leaves_it_alone(
    kind: str, table: Path, table_data: dict
) -> None:
    table.write_bytes(_bad_table(kind, table_data, table.read_bytes()))
    before = _snapshot(table)
    assert_user_error(run_cli("profile", "--validate", "--out", table, "--n-validate", "3"), table)
    assert _snapshot(table) == before


def test_search_names_an_unknown_device_id(tmp_path: Path) -> None:
    assert_user_error(run_cli("search", "--evaluator", "lut", "--hardware", "no-such-device", "--run-dir",
                              tmp_path / "run"), "no-such-device", "amd-epyc-torch-t1-fp32-b1", "nas profile")


@pytest.mark.parametrize(("flag", "value"), [("--batch", "0"), ("--batch", "-2"), ("--threads", "0")])
def test_profile_refuses_non_positive_sizes(flag: str, value: str) -> None:
    assert_user_error(run_cli("profile", flag, value, "--out", "t.yaml"), flag, "must be an integer in [1, ", value)
    assert not Path("t.yaml").exists()


@pytest.mark.parametrize("trials", ["0", "-3"])
def test_search_refuses_a_non_positive_budget(trials: str) -> None:
    assert_user_error(run_cli("search", "--trials", trials, "--run-dir", "run"), "trials", "greater than 0", trials)
    assert not Path("run").exists()


# -- run-config YAML ---------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "needles"), [
    ("trials: [1, 2\n", ["malformed yaml"]),
    ("trials: many\n", ["trials", "integer", "many"]),
    ("trialz: 3\n", ["unknown key", "trialz", "allowed keys", "trials", "seed", "strategy"]),
    ("objective:\n  metrc: accuracy\n", ["unknown key", "objective.metrc", "metric", "mode"]),
    ("- trials\n- 3\n", ["mapping", "list"]),
    (b"\xff\xfe\x00binary", ["utf-8"]),
])
def test_bad_run_config_names_the_file(text: str | bytes, needles: list[str]) -> None:
    path = Path("bad.yaml")
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert_user_error(run_cli("search", "--config", path, "--run-dir", "run"), "bad.yaml", *needles)
    assert not Path("run").exists()


def test_missing_run_config() -> None:
    assert_user_error(run_cli("search", "--config", "absent.yaml"), "absent.yaml", "not found")


# -- latency tables ----------------------------------------------------------------------------

def _bad_table(kind: str, data: dict, good_bytes: bytes) -> bytes:
    data = json.loads(json.dumps(data))  # a deep copy
    if kind == "binary":
        return b"\x00\xff\xfe\x80garbage"
    if kind == "not_yaml":
        return b"entries: {mbconv: [1, 2\n"
    if kind == "truncated":
        return good_bytes[: len(good_bytes) * 3 // 5]
    if kind == "scalar":
        return b"just some text\n"
    if kind == "no_entries":
        del data["entries"]
    elif kind == "lacking_keys":
        data["entries"] = {k: v for i, (k, v) in enumerate(sorted(data["entries"].items())) if i % 3}
    elif kind == "other_space":
        data["metadata"]["space"] = "mobilenet"
    elif kind == "other_batch":
        data["metadata"]["batch"] = 8
    return yaml.safe_dump(data, sort_keys=True).encode()


@pytest.mark.parametrize(("kind", "needles"), [
    ("binary", ["utf-8"]),
    ("not_yaml", ["malformed yaml"]),
    ("truncated", []),
    ("scalar", ["not a latency table"]),
    ("no_entries", ["entries", "field required"]),
    ("lacking_keys", ["lacks", "re-profile"]),
    ("other_space", ["mobilenet", "proxylessnas"]),
    ("other_batch", ["batch 8"]),
])
def test_search_refuses_a_bad_latency_table(
    kind: str, needles: list[str], table: Path, table_data: dict, tmp_path: Path
) -> None:
    table.write_bytes(_bad_table(kind, table_data, table.read_bytes()))
    before = _snapshot(table)
    assert_user_error(_search_lut(table, tmp_path / "run"), table, *needles)
    assert _snapshot(table) == before
    assert not (tmp_path / "run" / "trials.jsonl").exists()


def test_search_refuses_a_table_for_another_resolution(table: Path, tmp_path: Path) -> None:
    before = _snapshot(table)
    assert_user_error(_search_lut(table, tmp_path / "run", "--resolution", "64"), table, "resolution=32", "64")
    assert _snapshot(table) == before


def test_search_refuses_a_missing_table(tmp_path: Path) -> None:
    assert_user_error(_search_lut(tmp_path / "absent.yaml", tmp_path / "run"), "absent.yaml", "not found",
                      "nas profile")


# -- data sets ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "needles"), [
    (["--data", "cifar10", "--data-dir", "/nonexistent"], ["/nonexistent", "no such directory"]),
    (["--data", "cifar10"], ["--data-dir", "cifar10"]),
    (["--data", "imagenet"], ["imagenet", "cifar10", "digits"]),
])
def test_search_refuses_bad_data_before_training(args: list[str], needles: list[str]) -> None:
    assert_user_error(run_cli("search", "--evaluator", "train", "--trials", "1", "--run-dir", "run", *args),
                      *needles)
    assert not Path("run/trials.jsonl").exists()


def test_search_refuses_a_cifar10_dir_without_its_files(tmp_path: Path) -> None:
    (tmp_path / "cifar").mkdir()
    assert_user_error(run_cli("search", "--data", "cifar10", "--data-dir", tmp_path / "cifar", "--run-dir", "run"),
                      "cifar", "data_batch")


# -- export ------------------------------------------------------------------------------------

def _arch_file(kind: str, tiny_arch: dict) -> str:
    arch = json.loads(json.dumps(tiny_arch))
    if kind == "not_json":
        return "{space: proxylessnas"
    if kind == "unknown_space":
        arch["space"] = "nope"
    elif kind == "unknown_decision":
        arch["choices"]["s9.b9.op"] = "mb3_k3"
    elif kind == "unknown_choice":
        arch["choices"]["s1.b1.op"] = "zero"  # a stage's first block can't be skipped
    elif kind == "not_an_arch":
        arch = [arch]
    return json.dumps(arch)


@pytest.mark.parametrize(("kind", "needles"), [
    ("not_json", ["not valid json"]),
    ("unknown_space", ["unknown space", "nope", "proxylessnas"]),
    ("unknown_decision", ["unknown decision", "s9.b9.op", "s1.b1.op"]),
    ("unknown_choice", ["s1.b1.op", "zero", "mb3_k3", "mb6_k7"]),
    ("not_an_arch", ["choices", "config", "space"]),
])
def test_export_refuses_a_bad_arch_file(kind: str, needles: list[str], tiny_arch: dict) -> None:
    Path("arch.json").write_text(_arch_file(kind, tiny_arch))
    assert_user_error(run_cli("export", "--arch", "arch.json", "--format", "json", "--out", "out"),
                      "arch.json", *needles)
    assert not Path("out").exists()


def test_export_refuses_a_missing_arch_file() -> None:
    assert_user_error(run_cli("export", "--arch", "absent.json", "--out", "out"), "absent.json", "no such file")
    assert not Path("out").exists()


def test_export_refuses_an_unknown_format_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = run_cli("export", "--preset", "proxylessnas_tiny", "--format", "json,xml", "--out", out)
    assert_user_error(proc, "xml", "json", "onnx", "pt", "torchscript")
    assert _snapshot(out) == {out / "keep.txt": b"mine"}


def test_export_refuses_an_unwritable_out(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a regular file")
    assert_user_error(run_cli("export", "--preset", "proxylessnas_tiny", "--format", "json", "--out",
                              tmp_path / "file" / "out"), "file/out", "cannot write")
    assert (tmp_path / "file").read_text() == "a regular file"


@pytest.mark.parametrize(("args", "needles"), [
    ([], ["exactly one", "none"]),
    (["--preset", "proxylessnas_tiny", "--arch", "a.json"], ["exactly one", "--arch", "--preset"]),
    (["--preset", "proxylessnas_tiny", "--run-dir", "run"], ["exactly one", "--run-dir", "--preset"]),
])
def test_export_needs_exactly_one_source(args: list[str], needles: list[str]) -> None:
    assert_user_error(run_cli("export", *args, "--out", "out"), *needles)
    assert not Path("out").exists()


@pytest.mark.parametrize("flag", ["--run-dir", "--arch", "--out"])
@pytest.mark.parametrize(("value", "needles"), [
    ("", ["an empty path"]),
    ("p" * 130_000, ["130,000 characters", "(130000 chars)"]),
    ("d/" + "n" * 300, ["component of 300 bytes"]),
])
def test_export_paths_are_bounded_up_front(flag: str, value: str, needles: list[str]) -> None:
    source = [] if flag in ("--run-dir", "--arch") else ["--preset", "proxylessnas_tiny"]
    line = assert_user_error(run_cli("export", *source, flag, value, "--format", "json"), flag, *needles)
    assert len(line) < 400, line
    assert not list(Path.cwd().iterdir()), "a refused export wrote files"


def test_a_huge_unknown_flag_is_one_short_line() -> None:
    line = assert_user_error(run_cli("search", "--" + "x" * 130_000), "no such option", "(130002 chars)")
    assert len(line) < 400, line


@pytest.fixture
def finished_run(tiny_arch: dict, tmp_path: Path) -> Path:
    run = tmp_path / "finished"
    run.mkdir()
    record = {"arch": tiny_arch, "hash": "0" * 64, "metrics": {"params": 1, "macs": 1}, "score": 1.0}
    (run / "best.json").write_text(json.dumps([record]))
    return run


@pytest.mark.parametrize("rank", ["0", "2", "-1"])
def test_export_refuses_a_rank_out_of_range(rank: str, finished_run: Path) -> None:
    before = _snapshot(finished_run)
    assert_user_error(run_cli("export", "--run-dir", finished_run, "--rank", rank, "--out", "out"),
                      "--rank", "between 1 and 1", rank)
    assert _snapshot(finished_run) == before


def test_export_refuses_a_run_dir_without_best_json(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    assert_user_error(run_cli("export", "--run-dir", tmp_path / "run", "--out", "out"), "best.json", "not found")


def test_export_refuses_a_damaged_best_json(finished_run: Path) -> None:
    (finished_run / "best.json").write_text('[{"arch": ')
    before = _snapshot(finished_run)
    assert_user_error(run_cli("export", "--run-dir", finished_run, "--out", "out"), "best.json", "not json")
    assert _snapshot(finished_run) == before


# -- run dirs ----------------------------------------------------------------------------------

@pytest.fixture
def existing_run(tmp_path: Path) -> Path:
    """A run dir with a trial log, a strategy state and a best list (contents need not be real)."""
    run = tmp_path / "existing"
    run.mkdir()
    (run / "trials.jsonl").write_text('{"trial": 0}\n{"trial": 1}\n')
    (run / "strategy.json").write_text('{"n_recorded": 2, "strategy": {}}')
    (run / "best.json").write_text("[]")
    return run


def test_search_refuses_a_run_dir_in_use(existing_run: Path, table: Path) -> None:
    from filelock import FileLock

    before = _snapshot(existing_run)
    lock = FileLock(existing_run / ".lock")
    lock.acquire()
    try:
        assert_user_error(_search_lut(table, existing_run), "in use", existing_run.name)
    finally:
        lock.release()
    assert _snapshot(existing_run) == before


def test_search_refuses_a_run_dir_holding_another_search(existing_run: Path, table: Path) -> None:
    from nas.config import RunConfig
    from nas.run_dir import RunDir

    stored = RunConfig(evaluator="lut", hardware=str(table), trials=3, seed=7)
    RunDir(existing_run).write_config(stored.model_dump(mode="json"))
    before = _snapshot(existing_run)
    assert_user_error(_search_lut(table, existing_run), "different search", "seed", "7")
    assert _snapshot(existing_run) == before


def test_search_refuses_an_unwritable_run_dir(table: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a regular file")
    assert_user_error(_search_lut(table, tmp_path / "file" / "run"), "file/run", "not writable")
    assert (tmp_path / "file").read_text() == "a regular file"


def test_profile_refuses_an_unwritable_out(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a regular file")
    assert_user_error(run_cli("profile", "--out", tmp_path / "file" / "t.yaml"), "--out", "file/t.yaml",
                      "cannot write")
    assert (tmp_path / "file").read_text() == "a regular file"


# -- what works --------------------------------------------------------------------------------

def test_spaces_lists_proxylessnas() -> None:
    proc = run_cli("spaces", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["space"]: r for r in json.loads(proc.stdout)}
    assert rows["proxylessnas"]["decisions"] == 21
    assert "proxyless_mobile" in rows["proxylessnas"]["presets"]
    table = run_cli("spaces")
    assert table.returncode == 0, table.stderr
    assert "proxylessnas" in table.stdout and "21" in table.stdout


def test_spaces_describes_a_preset() -> None:
    proc = run_cli("spaces", "proxylessnas", "--preset", "proxyless_mobile", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert (info["params"], info["macs"]) == (4080512, 320427584)


@pytest.mark.parametrize("args", [["--help"], ["search", "--help"]])
def test_help_imports_neither_torch_nor_ray(args: list[str]) -> None:
    # A fresh interpreter: the warm one has imported both already.
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "nas.cli", *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Example:" in proc.stdout
    modules = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert modules, proc.stderr[-2000:]
    assert not {m for m in modules if m.split(".")[0] in ("torch", "ray")}


def test_flag_of_the_wrong_type_is_one_line() -> None:
    assert_user_error(run_cli("profile", "--batch", "many"), "--batch", "integer")


@pytest.mark.parametrize(("signum", "code"), [(2, 130), (15, 143)])
def test_a_signal_before_a_command_installs_its_handlers_stops_with_the_one_line(
        signum: int, code: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """SIGINT or SIGTERM while a command still imports (before `nas.interrupts` takes over) stops it in one line
    with 128 + the signal, not silently (SIGTERM's default) nor with a traceback."""
    import os
    import signal

    import nas.cli as cli

    def command(**kwargs) -> None:  # the signal lands while the command is still starting
        os.kill(os.getpid(), signum)  # its handler runs at the next bytecode, in this thread
        raise AssertionError("the signal did not stop the command")

    saved = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli, "app", command)
    try:
        with pytest.raises(SystemExit) as stopped:
            cli.main()
    finally:
        signal.signal(signal.SIGTERM, saved)
    assert stopped.value.code == code
    assert capsys.readouterr().err == "stopped; re-run the same command to resume\n"

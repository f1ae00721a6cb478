"""`nas profile` and `nas spaces` on latency tables: where tables go, which table is read, what is printed.

The commands run in-process (typer's runner) with the timing itself replaced where it
would take minutes; what is checked is which table is read and which path is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nas.cli import app
from nas.config import PROFILES_DIR
from nas.hardware.store import default_device_id, table_path
from nas.space import find_preset, space_of

from .test_store import _synthetic, run_suggested

TORCH_R32 = PROFILES_DIR / "amd-epyc-torch-t1-fp32-b1" / "proxylessnas-r32.yaml"


def _invoke(*args: str, terminal_width: int = 80):
    return CliRunner().invoke(app, [str(a) for a in args], terminal_width=terminal_width)


def test_a_new_table_goes_to_the_user_dir(user_profiles, monkeypatch, tmp_path):
    got = run_suggested("nas profile --space proxylessnas --resolution 224", monkeypatch)
    assert got.path == user_profiles / got.timer.device_id / "proxylessnas-r224.yaml"
    named = tmp_path / "here.yaml"
    assert run_suggested(f"nas profile --out {named}", monkeypatch).path == named  # only --out goes elsewhere


def test_validate_reads_the_committed_table_and_writes_the_user_dir(user_profiles, monkeypatch, tmp_path):
    calls = []

    def capture(table, space, timer, n, progress, out_path):
        calls.append((table.path, Path(out_path)))
        raise SystemExit(0)

    monkeypatch.setattr("nas.hardware.profile.validate", capture)
    before = TORCH_R32.read_bytes()
    assert _invoke("profile", "--validate", "--n-validate", "3").exit_code == 0
    device = default_device_id("cpu")
    if device == "amd-epyc-torch-t1-fp32-b1":  # the committed tables' device: found there
        assert calls[-1] == (TORCH_R32.resolve(), user_profiles / device / "proxylessnas-r32.yaml")
    copy = tmp_path / "copy.yaml"
    copy.write_bytes(before)
    assert _invoke("profile", "--validate", "--out", copy).exit_code == 0  # --out names both
    assert calls[-1] == (copy.resolve(), copy)
    assert _invoke("profile", "--validate", "--table", copy, "--out", tmp_path / "new.yaml").exit_code == 0
    assert calls[-1] == (copy.resolve(), tmp_path / "new.yaml")
    assert TORCH_R32.read_bytes() == before


@pytest.mark.parametrize(("args", "needles"), [
    (["--validate", "--rescale"], ["--validate and --rescale"]),
    (["--table", "t.yaml"], ["--table t.yaml", "--validate or --rescale"]),
    (["--preset", "proxylessnas_tiny", "--space", "nasnet"], ["proxylessnas_tiny", "nasnet", "--space proxylessnas"]),
])
def test_profile_refuses_contradictory_flags(args, needles):
    result = _invoke("profile", *args)
    assert result.exit_code != 0 and result.exception is not None
    for needle in needles:
        assert needle in str(result.exception), str(result.exception)


def test_spaces_prices_a_preset_with_the_table_of_its_config():
    arch = find_preset("proxylessnas_tiny")
    space = space_of(arch)
    result = _invoke("spaces", "--preset", "proxylessnas_tiny", "--json")
    info = json.loads(result.stdout)
    assert info["latency_ms"] is None and "--width-mult 0.35" in info["latency_note"]
    path = _synthetic(space, table_path(default_device_id("cpu"), space))
    info = json.loads(_invoke("spaces", "--preset", "proxylessnas_tiny", "--json").stdout)
    assert info["latency_ms"] == pytest.approx(0.01 * len(space.latency_keys(arch)))
    assert info["latency_table"] == str(path.resolve())
    text = _invoke("spaces", "--preset", "proxylessnas_tiny").stdout
    assert f"LUT latency: {info['latency_ms']:.3f} ms ({path})" in text


def test_spaces_says_why_a_preset_has_no_table_and_how_to_make_one(monkeypatch):
    result = _invoke("spaces", "proxylessnas", "--preset", "proxyless_mobile")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if "LUT latency" in line)
    assert "LUT latency: - ms (no table for this config" in line
    if default_device_id("cpu") == "amd-epyc-torch-t1-fp32-b1":  # the committed r224 table is the nearest
        assert "num_classes=10 (this arch: 1000)" in line and "proxylessnas-r224.yaml" in line
    command = line.rsplit("`", 2)[-2]
    got = run_suggested(command, monkeypatch)
    assert got.space.config == space_of(find_preset("proxyless_mobile")).config
    assert "--preset proxyless_mobile" in command


# -- every option, out of its range: one line naming it, exit 2, nothing written --------------------

@pytest.fixture(scope="module")
def zygote_profiles(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """The user profiles dir of the warm CLI: set before its interpreter starts, so the commands it runs
    write (if they wrongly did) where the tests look."""
    path = tmp_path_factory.mktemp("zygote-profiles")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NAS_PROFILES_DIR", str(path))
        request.getfixturevalue("warm_cli")
        yield path


_PROFILE_CASES = [
    ("--threads", "0", "[1, "), ("--threads", "100000", "this machine's"), ("--threads", "-1", "[1, "),
    ("--batch", "0", "[1, 1,024]"), ("--batch", "1025", "[1, 1,024]"), ("--batch", "100000000", "got 100000000"),
    ("--n-validate", "1", "[2, 10,000]"), ("--n-validate", "10001", "[2, 10,000]"),
    ("--n-validate", "100000000", "got 100000000"),
    ("--seed", "-1", "[0, 4,294,967,295]"), ("--seed", "4294967296", "got 4294967296"),
    ("--resolution", "100000", "[32, 1024]"), ("--classes", "0", "num_classes"), ("--width-mult", "nan", "finite"),
    ("--width-mult", "inf", "finite"), ("--dtype", "x" * 130_000, "(130000 chars)"),
    ("--out", "", "an empty path"), ("--out", "o" * 130_000, "(130000 chars)"), ("--out", "d/" + "n" * 256, "255"),
    ("--table", "t" * 130_000, "(130000 chars)"),
]
_PROFILE_CASES += [(flag, value, "") for flag in ("--threads", "--batch", "--n-validate", "--seed")
                   for value in ("nan", "1e8", "1.5", "9" * 5000)]


@pytest.mark.parametrize(("flag", "value", "needle"), _PROFILE_CASES)
def test_profile_options_are_checked_before_anything_is_timed_or_written(
    zygote_profiles: Path, in_tmp_dir: None, flag: str, value: str, needle: str
) -> None:
    from tests.cli_harness import assert_user_error, run_cli

    more = ["--validate"] if flag == "--table" else []
    line = assert_user_error(run_cli("profile", *more, flag, value), flag, needle)
    assert len(line) < 400, line
    assert not list(Path.cwd().iterdir()) and not list(zygote_profiles.iterdir()), "a refused profile wrote files"


def test_profile_help_shows_the_ranges() -> None:
    text = " ".join(_invoke("profile", "--help", terminal_width=400).stdout.replace("│", " ").split())
    for needle in ("Batch size; 1 to 1024.", "1 to this machine's CPUs", "2 to 10,000.", "0 to 4294967295."):
        assert needle in text, needle

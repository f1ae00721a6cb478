"""Export: every registered format for the tiny ProxylessNAS preset, verified; bad requests, full disks and kills
change nothing at the destination."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import onnxruntime
import pytest
import torch

from nas import export as export_module
from nas import export_source
from nas.arch import Arch
from nas.errors import NasError, UserError
from nas.export import OnnxExporter, export
from nas.registry import EXPORTERS
from nas.space import find_preset, space_of


@pytest.fixture(scope="module")
def arch() -> Arch:
    return find_preset("proxylessnas_tiny")


def test_registered_formats() -> None:
    assert EXPORTERS.names() == ["json", "onnx", "pt", "torchscript"]


def test_all_formats_written_and_verified(arch: Arch, tmp_path: Path) -> None:
    results = export(arch, EXPORTERS.names(), tmp_path / "out")
    stem = f"proxylessnas-{arch.short_hash}"
    names = {f: r.path.name for f, r in results.items()}
    assert names == {
        "json": f"{stem}.json",
        "onnx": f"{stem}.onnx",
        "pt": f"{stem}.pt",
        "torchscript": f"{stem}.torchscript.pt",
    }
    # Only the four files: no temp files or directories left behind.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(names.values())
    assert results["json"].max_abs_diff == results["pt"].max_abs_diff == 0.0
    assert results["torchscript"].max_abs_diff <= 1e-5 and results["onnx"].max_abs_diff <= 1e-4

    assert Arch.from_json(results["json"].path.read_text()) == arch
    checkpoint = torch.load(results["pt"].path, weights_only=True)
    assert Arch.from_json(checkpoint["arch"]) == arch
    x = torch.randn(4, 3, 32, 32)
    model = space_of(arch).build(arch).eval()
    model.load_state_dict(checkpoint["state_dict"])
    with torch.inference_mode():
        expected = model(x)
        assert torch.allclose(torch.jit.load(results["torchscript"].path)(x), expected, atol=1e-5)
    session = onnxruntime.InferenceSession(str(results["onnx"].path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": x.numpy()})  # batch 4: the batch axis is dynamic
    assert torch.allclose(torch.from_numpy(logits), expected, atol=1e-4)


def test_given_model_is_exported_and_left_untouched(arch: Arch, tmp_path: Path) -> None:
    torch.manual_seed(123)
    model = space_of(arch).build(arch).train()
    results = export(arch, ["pt", "pt"], tmp_path, model=model)
    assert list(results) == ["pt"] and model.training
    saved = torch.load(results["pt"].path, weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_unknown_format_writes_nothing(arch: Arch, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown export format 'tflite'; known: json, onnx, pt, torchscript"):
        export(arch, ["json", "tflite"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unwritable_out_dir_is_user_error(arch: Arch, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match=f"--out {blocker / 'out'}: cannot write there"):
        export(arch, ["json"], blocker / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_failed_verification_is_nas_error_and_keeps_nothing(
    arch: Arch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(OnnxExporter, "tolerance", -1.0)
    with pytest.raises(NasError, match="differs from PyTorch") as err:
        export(arch, ["onnx"], tmp_path)
    assert not isinstance(err.value, UserError)
    assert list(tmp_path.iterdir()) == []


def test_checked_outputs_depend_on_the_input(arch: Arch) -> None:
    """Fresh batch-norm statistics would make every logit nearly constant and the export check blind."""
    from nas.export import _build

    model = _build(arch, seed=0)
    with torch.inference_mode():
        logits = model(torch.randn(4, 3, arch.config["resolution"], arch.config["resolution"]))
    assert float(logits.std(0).max()) > 0.05
    assert not model.training


def test_the_check_sees_blocks_whose_last_norm_starts_at_zero() -> None:
    """BossNet zero-initialises each block's last batch-norm scale: untrained, a block would add nothing."""
    from nas.export import _build

    arch = find_preset("bossnas_hytra_tiny")
    zero = [m for m in space_of(arch).build(arch).modules() if isinstance(m, torch.nn.BatchNorm2d)
            and bool((m.weight == 0).all())]
    assert zero, "the space no longer zero-initialises a norm: this test checks nothing"
    model = _build(arch, seed=0)
    assert all(bool((m.weight != 0).all()) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def _nth_name(arch: Arch, n: int) -> str:
    """The file name of the `n`-th of json, pt, torchscript, onnx, as a regex."""
    suffix = ["json", "pt", "torchscript.pt", "onnx"][n - 1]
    return re.escape(f"proxylessnas-{arch.short_hash}.{suffix}")


@pytest.mark.parametrize("fail_at", [1, 2, 4])
def test_full_disk_changes_nothing(arch: Arch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: int) -> None:
    """The disk fills during the `fail_at`-th file: files of this run are removed, older ones stay as they were."""
    out = tmp_path / "out"
    out.mkdir()
    old = out / f"proxylessnas-{arch.short_hash}.json"
    old.write_text("an older export\n")
    before = _files(out)
    calls = []

    def full_disk(path: Path, data: bytes) -> None:
        calls.append(path.name)
        if len(calls) == fail_at:
            path.write_bytes(data[: len(data) // 2])  # a partial file, as a real full disk leaves
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    real_write = export_module.write_bytes
    monkeypatch.setattr(export_module, "write_bytes", full_disk)
    with pytest.raises(UserError, match=rf"--out {out}: disk full while writing {_nth_name(arch, fail_at)}; "
                                        r"nothing was written or changed there") as err:
        export(arch, ["json", "pt", "torchscript", "onnx"], out)
    assert "\n" not in str(err.value)
    assert len(calls) == fail_at
    assert _files(out) == before  # no temp directory, no new file, the old file untouched


def test_other_write_errors_are_not_called_a_full_disk(
    arch: Arch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(path: Path, data: bytes) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(export_module, "write_bytes", broken)
    with pytest.raises(OSError, match="Input/output error"):
        export(arch, ["json"], tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_check_writes_no_format(
    arch: Arch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(OnnxExporter, "tolerance", -1.0)
    with pytest.raises(NasError, match="nothing was written"):
        export(arch, ["json", "pt", "onnx"], tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_entries_are_removed(arch: Arch, tmp_path: Path) -> None:
    from nas.export import _host_tag

    dead = tmp_path / ".export-123456789"  # no such pid (above the kernel's pid_max)
    (dead / "sub").mkdir(parents=True)
    (dead / "sub" / "big.onnx").write_bytes(b"x" * 1000)
    dead_here = tmp_path / f".export-123456789-{_host_tag()}-abcd1234"
    dead_here.mkdir()
    probe = tmp_path / f".export-123456789-{_host_tag()}-probe-x.tmp"
    probe.write_text("")
    live = tmp_path / f".export-{os.getpid()}-{_host_tag()}-abcd1234"  # a concurrent export of this process
    live.mkdir()
    elsewhere = tmp_path / ".export-123456789-0000abcd-abcd1234"  # another host's pid: cannot tell, so kept
    elsewhere.mkdir()
    old = tmp_path / ".export-qw3e4r5t"  # the unnamed kind older versions left: removed once an hour old
    old.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    young = tmp_path / ".export-zx8c7v6b"
    young.mkdir()
    keep = tmp_path / "notes.export-1"
    keep.write_text("mine")
    export(arch, ["json"], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, elsewhere.name, young.name, keep.name, f"proxylessnas-{arch.short_hash}.json"])


_EXPORT_SCRIPT = """
import sys
import nas.export as e
real = e.write_bytes
def slow(path, data):
    real(path, data)
    print("wrote", path, flush=True)
    import time; time.sleep(60)  # killed here, after the first file, while it sits in the temp dir
e.write_bytes = slow
sys.argv = ["nas", "export", "--preset", "proxylessnas_tiny", "--format", "json,pt", "--out", sys.argv[1]]
import nas.cli
nas.cli.main()
"""


@pytest.mark.slow
def test_killed_export_leaves_no_partial_file_and_the_next_run_cleans_up(arch: Arch, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    stem = f"proxylessnas-{arch.short_hash}"
    (out / f"{stem}.pt").write_bytes(b"an older export")
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1"}  # as the test process: two threads slow a shared machine
    proc = subprocess.Popen([sys.executable, "-c", _EXPORT_SCRIPT, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=one_thread)
    try:
        line = proc.stdout.readline()  # blocks until the first file is written (or the process dies)
        assert line.startswith("wrote "), f"export did not start: {line!r} {proc.stderr.read()}"
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    temps = [p.name for p in out.iterdir() if p.name.startswith(".export-")]
    assert len(temps) == 1 and temps[0].startswith(f".export-{proc.pid}-"), temps
    assert (out / f"{stem}.pt").read_bytes() == b"an older export"  # untouched
    assert not (out / f"{stem}.json").exists()  # the written file was still in the temp dir

    again = subprocess.run([sys.executable, "-m", "nas.cli", "export", "--preset", "proxylessnas_tiny", "--format",
                            "json,pt", "--out", str(out)], capture_output=True, text=True, timeout=300, env=one_thread)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"{stem}.json", f"{stem}.pt"]
    assert Arch.from_json((out / f"{stem}.json").read_text()) == arch
    assert torch.load(out / f"{stem}.pt", weights_only=True)["arch"] == arch.to_json()


# -- the arch of a run dir: every way best.json can be unusable is one line that says what to do ------------

def _run_dir(tmp_path: Path, best: str | None, *others: str) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    for name in others:
        (run / name).write_text("{}\n")
    if best is not None:
        (run / "best.json").write_text(best)
    return run


def _record(arch: Arch) -> dict:
    return {"arch": arch.to_dict(), "hash": arch.hash, "metrics": {}, "feasible": True, "violations": {}}


@pytest.mark.parametrize("rank", [1, 0, 3])
def test_an_empty_best_json_says_the_run_has_no_ranked_archs(tmp_path: Path, rank: int) -> None:
    run = _run_dir(tmp_path, "[]\n", "trials.jsonl")
    with pytest.raises(UserError) as err:
        export_source.pick_arch(run, rank, None, None)
    message = str(err.value)
    assert "no ranked archs yet" in message and "between 1 and 0" not in message, message
    assert str(run) in message and "--arch or --preset" in message and "\n" not in message, message


def test_a_run_dir_without_best_json_says_whether_the_search_is_unfinished(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a directory"):
        export_source.pick_arch(tmp_path / "nowhere", 1, None, None)
    run = _run_dir(tmp_path, None)
    with pytest.raises(UserError, match=r"best.json not found; is .* the run dir of a finished search"):
        export_source.pick_arch(run, 1, None, None)
    (run / "trials.jsonl").write_text('{"trial": 0}\n')
    with pytest.raises(UserError, match=r"has not finished .* resume it with the same `nas search` command"):
        export_source.pick_arch(run, 1, None, None)


@pytest.mark.parametrize(("best", "needle"), [
    ("", "damaged"),
    ('[{"arch": ', "damaged"),
    ('{"arch": 1}', "damaged"),
    ("[1, 2]", "damaged"),
    ('[{"arch": 1}]', "damaged at rank 1"),
    ('[{"arch": {"space": "proxylessnas", "choices": 5, "config": {}}}]', "damaged at rank 1"),
    ("\x00\xff" * 10, "damaged"),
    ("[" + " " * (5 * 2**20) + "]", "damaged"),  # over the size limit for input files
], ids=["empty-file", "cut", "object", "numbers", "arch-number", "arch-choices", "binary", "huge"])
def test_a_damaged_best_json_is_one_line(tmp_path: Path, best: str, needle: str) -> None:
    run = _run_dir(tmp_path, best)
    with pytest.raises(UserError) as err:
        export_source.pick_arch(run, 1, None, None)
    message = str(err.value)
    assert needle in message and str(run / "best.json") in message, message
    assert "\n" not in message and len(message) < 600, message


def test_a_best_json_that_is_no_file_is_one_line(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, None)
    (run / "best.json").mkdir()
    with pytest.raises(UserError, match="is a directory"):
        export_source.pick_arch(run, 1, None, None)
    (run / "best.json").rmdir()
    (run / "best.json").symlink_to(run / "gone.json")
    with pytest.raises(UserError, match=r"cannot read .*best.json \(No such file"):
        export_source.pick_arch(run, 1, None, None)


def test_the_rank_picks_a_record_and_is_checked(arch: Arch, tmp_path: Path) -> None:
    first = next(iter(arch.choices))
    other = arch.replace(**{first: next(c for c in _choices(arch, first) if c != arch.choices[first])})
    assert other != arch
    run = _run_dir(tmp_path, json.dumps([_record(arch), _record(other)]))
    assert export_source.pick_arch(run, 2, None, None) == other
    assert export_source.pick_arch(run, 1, None, None) == arch
    with pytest.raises(UserError, match=r"--rank must be between 1 and 2 .*; got 3"):
        export_source.pick_arch(run, 3, None, None)


def test_the_cli_prints_the_empty_run_in_one_line(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, "[]", "trials.jsonl")
    proc = subprocess.run([sys.executable, "-m", "nas.cli", "export", "--run-dir", str(run), "--rank", "1", "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "no ranked archs yet" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def _choices(arch: Arch, decision: str) -> tuple:
    return next(d.choices for d in space_of(arch).decisions() if d.name == decision)


@pytest.mark.parametrize(("value", "delta", "passes"), [
    (50.0, 2e-3, True),  # 4e-5 of the largest output: float32 rounding in a deep net's large logits
    (50.0, 1e-2, False),
    (0.5, 2e-4, False),  # outputs up to 1 are compared absolutely
    (0.5, 5e-5, True),
])
def test_the_onnx_tolerance_is_relative_to_large_outputs(tmp_path: Path, value: float, delta: float,
                                                         passes: bool) -> None:
    class _Shifted(OnnxExporter):
        def reload(self, arch: Arch, path: Path, x: torch.Tensor) -> torch.Tensor:
            return expected + delta

    expected = torch.full((3, 10), value)
    verify = lambda: export_module._verify("onnx", _Shifted(), find_preset("proxylessnas_tiny"),  # noqa: E731
                                           tmp_path / "x.onnx", torch.zeros(1), expected)
    if passes:
        assert verify() == pytest.approx(delta, rel=1e-3)
    else:
        with pytest.raises(NasError, match="differs from PyTorch by"):
            verify()

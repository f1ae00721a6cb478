"""A warm `nas` CLI for tests: commands run in processes forked from one interpreter that has
imported torch and Ray already (`_Zygote`); each fork runs `nas.cli.main` exactly as the console
script does, with its own stdout, stderr and exit status. Set NAS_TEST_CLI_SUBPROCESS=1 to start
a fresh `python -m nas.cli` for every command instead (slower, same results).

A test module uses it with `from tests.cli_harness import warm_cli, run_cli, ...` and
`pytestmark = pytest.mark.usefixtures("warm_cli")` (or an autouse fixture of its own).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

_IMPORTS = (
    "nas.cli nas.config nas.runner nas.progress nas.spaces nas.strategies nas.evaluate nas.evaluate.data "
    "nas.hardware nas.hardware.profile nas.export filelock sklearn.datasets rich.console rich.table"
).split()

# Runs in the warm interpreter: reads one JSON request a line, forks, the child runs the CLI.
_ZYGOTE = r"""
import importlib, json, os, sys, time, traceback
started_env = dict(os.environ)  # what imports add to it stays; what the test removed since goes
for name in sys.argv[1:]:
    importlib.import_module(name)
sys.stdout.write("ready\n")
sys.stdout.flush()
while True:
    line = sys.stdin.readline()
    if not line:
        break
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setsid()
            for name in set(started_env) - set(req["env"]):
                os.environ.pop(name, None)
            os.environ.update(req["env"])
            import tempfile
            tempfile.tempdir = None  # TMPDIR as the test has it now
            os.chdir(req["cwd"])
            for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["stdout"], os.O_WRONLY),
                                    (2, req["stderr"], os.O_WRONLY)):
                os.dup2(os.open(path, flags), fd)
            sys.argv = ["nas", *req["argv"]]
            try:
                import nas.cli
                nas.cli.main()
                code = 0
            except SystemExit as exc:
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + req["timeout"]
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            rc = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            os.killpg(pid, 9)
            os.waitpid(pid, 0)
            rc = -9
            break
        time.sleep(0.005)
    sys.stdout.write(json.dumps({"rc": rc}) + "\n")
    sys.stdout.flush()
"""


class _Zygote:
    """One warm interpreter that forks a child per CLI command."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="nas-cli-test-")
        self._log = open(Path(self._dir) / "zygote.log", "w")  # open while the zygote lives
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE, *_IMPORTS], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._log, text=True, env={**os.environ, "COLUMNS": "200"},
        )
        self._lock = threading.Lock()
        self._n = 0
        ready = self._proc.stdout.readline()
        if ready != "ready\n":
            log = (Path(self._dir) / "zygote.log").read_text()
            self.close()
            raise AssertionError(f"CLI zygote did not start: {log}")

    def run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess:
        with self._lock:
            self._n += 1
            out, err = (Path(self._dir) / f"{self._n}.{s}" for s in ("out", "err"))
            out.touch()
            err.touch()
            request = {"argv": args, "cwd": os.getcwd(), "env": {**os.environ, "COLUMNS": "200"},
                       "stdout": str(out), "stderr": str(err), "timeout": timeout}
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            reply = self._proc.stdout.readline()
            assert reply, f"CLI zygote died: {(Path(self._dir) / 'zygote.log').read_text()}"
            rc = json.loads(reply)["rc"]
            return subprocess.CompletedProcess(["nas", *args], rc, out.read_text(), err.read_text())

    def close(self) -> None:
        """Stop the zygote (killed after 30 s) and remove its directory of outputs."""
        try:
            self._proc.stdin.close()
            self._proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait(timeout=30)
        finally:
            self._proc.stdout.close()
            self._log.close()
            shutil.rmtree(self._dir, ignore_errors=True)


_zygote: _Zygote | None = None


@pytest.fixture(scope="session")
def cli_zygote() -> Iterator[_Zygote | None]:
    """One zygote for the whole session, started by the first module that asks (each start costs seconds of
    imports); every command gets the test's environment as it is then, as a fresh subprocess would."""
    zygote = None if os.environ.get("NAS_TEST_CLI_SUBPROCESS") == "1" else _Zygote()
    yield zygote
    if zygote is not None:
        zygote.close()


@pytest.fixture(scope="module")
def warm_cli(cli_zygote: _Zygote | None) -> Iterator[None]:
    global _zygote
    _zygote = cli_zygote
    yield
    _zygote = None


@pytest.fixture
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands run in a fresh directory, so a default path (runs/, exported/) never lands in the repo."""
    monkeypatch.chdir(tmp_path)


def run_cli(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `nas ARGS` in the current directory; returns its exit status, stdout and stderr."""
    argv = [str(a) for a in args]
    if _zygote is not None:
        return _zygote.run(argv, timeout)
    return subprocess.run([sys.executable, "-m", "nas.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str | Path) -> str:
    """Exit 2, no traceback, exactly one non-empty stderr line containing every needle (any case)."""
    shown = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout, shown
    assert proc.returncode == 2, shown
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, shown
    for needle in needles:
        assert str(needle).lower() in lines[0].lower(), f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def snapshot(*roots: Path) -> dict[Path, bytes]:
    """Bytes of every file under `roots` (files or directories), the lock file aside."""
    files = [p for r in roots for p in ([r] if r.is_file() else sorted(r.rglob("*"))) if p.is_file()]
    return {p: p.read_bytes() for p in files if p.name != ".lock"}

"""Shared fixtures: registry names for contract tests, a seeded RNG, the tiny preset."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from nas.registry import SPACES, STRATEGIES


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Enrol every registered space and strategy in the contract tests that ask for one."""
    if "space_name" in metafunc.fixturenames:
        metafunc.parametrize("space_name", SPACES.names())
    if "strategy_name" in metafunc.fixturenames:
        metafunc.parametrize("strategy_name", STRATEGIES.names())


@pytest.fixture(scope="session", autouse=True)
def _private_temp_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The system temp dir of the whole session (and of the processes it starts) is a dir of its own, removed
    at the end: what the code under test keeps in temp (a full disk's `nas-unsaved-*` tables, the CLI
    harness's `nas-cli-test-*` outputs, ONNX exports) never piles up in /tmp.

    Ray keeps the temp dir it had: its unix socket paths under it must stay within 107 bytes.
    """
    path = tmp_path_factory.mktemp("tmp")
    saved = {name: os.environ.get(name) for name in ("TMPDIR", "RAY_TMPDIR")}
    saved_tempdir = tempfile.tempdir
    os.environ.setdefault("RAY_TMPDIR", os.environ.get("TMPDIR") or "/tmp")
    os.environ["TMPDIR"] = str(path)
    tempfile.tempdir = str(path)
    try:
        yield path
    finally:
        tempfile.tempdir = saved_tempdir
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _session_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One cache dir for the session and the processes it starts: a host-speed timing (`nas.hardware.host_speed`)
    is reused by every search of the session, as by a user's searches, and a user's cache never reaches a test."""
    saved = os.environ.get("NAS_CACHE_DIR")
    os.environ["NAS_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("NAS_CACHE_DIR", None)
        else:
            os.environ["NAS_CACHE_DIR"] = saved


@pytest.fixture(autouse=True)
def _private_profiles_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables a test measures go to a temp dir, and a user's own tables never reach a test."""
    monkeypatch.setenv("NAS_PROFILES_DIR", str(tmp_path_factory.mktemp("profiles")))


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray cluster of 2 CPUs for the tests of one module (searches join it)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def synthetic_table(space_name: str, path: Path) -> Path:
    """Write a synthetic latency table for `space_name` at its demo config: 0.02 ms + 1 ms per 10M MACs per unit.

    Searches in tests price archs with it, so they need no minutes of profiling; real
    tables are measured by `nas profile` (tests/hardware).
    """
    from nas.hardware.table import Entry, LatencyTable, Metadata, TableFile
    from nas.space import load_space

    space = load_space(space_name)
    entries = {k: Entry(mean=0.02 + space.unit_cost(k)[1] / 1e7, std=0.0, count=1) for k in space.all_latency_keys()}
    meta = Metadata(space=space_name, space_config=space.config.model_dump(mode="json"), device_id="synthetic",
                    backend="cpu", hardware="synthetic", batch=1, dtype="fp32", threads=1, versions={},
                    measured_at="2026-01-01")
    LatencyTable(TableFile(metadata=meta, entries=entries)).save(path)
    return path


@pytest.fixture(scope="session")
def lut_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic latency table of the proxylessnas demo config (see `synthetic_table`)."""
    return synthetic_table("proxylessnas", tmp_path_factory.mktemp("lut") / "proxylessnas-r32.yaml")


from tests.cli_harness import cli_zygote, in_tmp_dir, warm_cli  # noqa: E402, F401  (fixtures for CLI test modules)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Torch on one thread in the test process: the tests run tiny networks, which take milliseconds on one
    thread and seconds on two threads of a 2-core machine shared with the Ray workers and subprocesses the
    tests start. Subprocesses keep their own setting."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _one_torch_thread_after_each_test() -> Iterator[None]:
    """A test that sets torch's thread count (in-process training sets one per worker CPU) leaks nothing into the
    next: one thread again after each test (`_one_torch_thread`)."""
    yield
    import torch

    torch.set_num_threads(1)

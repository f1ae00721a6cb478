"""A named pipe, a directory or a device where a file is expected is refused at once, never waited on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nas.errors import UserError
from nas.files import load_yaml
from nas.hardware.table import LatencyTable
from nas.run_dir import RunDir


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("name", ["trials.jsonl", "strategy.json"])
def test_a_pipe_in_the_run_dir_is_refused(tmp_path: Path, name: str) -> None:
    _fifo(tmp_path / name)
    with RunDir(tmp_path) as rd, pytest.raises(UserError, match="named pipe, not a regular file"):
        rd.read_trials() if name == "trials.jsonl" else rd.read_state()


@pytest.mark.parametrize("make", [_fifo, lambda p: (p.mkdir(), p)[1], lambda p: Path("/dev/zero")])
def test_special_config_and_table_files_are_refused(tmp_path: Path, make) -> None:
    path = make(tmp_path / "x.yaml")
    with pytest.raises(UserError, match="not a regular file"):
        load_yaml(path)
    with pytest.raises(UserError, match="not a regular file"):
        LatencyTable.load(path)


def test_a_pipe_as_cifar_batch_is_refused(tmp_path: Path) -> None:
    from nas.evaluate.data import load_dataset

    _fifo(tmp_path / "data_batch_1")
    (tmp_path / "test_batch").write_bytes(b"not read: the pipe is refused first")
    with pytest.raises(UserError, match="not a regular file"):
        load_dataset("cifar10", tmp_path)


def test_a_table_with_an_alias_bomb_or_a_nul_byte_is_refused_at_once(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(9)))
    with pytest.raises(UserError, match="bomb.yaml"):
        LatencyTable.load(bomb)
    nul = tmp_path / "nul.yaml"
    nul.write_text("metadata: {}\x00\n")
    for load in (LatencyTable.load, load_yaml):
        with pytest.raises(UserError, match="nul.yaml: malformed YAML"):
            load(nul)

"""The registries: a looked-up strategy or method imports its own module only; listing imports every one."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nas.config import METHODS_DIR, STRATEGIES_DIR
from nas.errors import NasError, UserError
from nas.registry import METHODS, STRATEGIES, Registry


def test_names_are_the_yaml_stems() -> None:
    assert STRATEGIES.names() == sorted(p.stem for p in STRATEGIES_DIR.glob("*.yaml"))
    assert METHODS.names() == sorted(p.stem for p in METHODS_DIR.glob("*.yaml"))


def test_looking_up_one_strategy_imports_only_its_module() -> None:
    code = ("import sys\nfrom nas.registry import STRATEGIES\nSTRATEGIES.get('evolution')\n"
            "print(sorted(m for m in sys.modules if m.startswith('nas.strategies.') or m == 'optuna'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = eval(proc.stdout)  # a printed list of str
    assert "nas.strategies.evolution" in loaded
    assert "optuna" not in loaded and "nas.strategies.tpe" not in loaded, loaded


@pytest.mark.parametrize("name", ["nope", "../random", "Random", "random.yaml", "", 3])
def test_an_unknown_name_lists_every_known_one(name: object) -> None:
    with pytest.raises(UserError, match="unknown strategy .*known: early_exit_evolution, evolution, nni"):
        STRATEGIES.get(name)  # type: ignore[arg-type]


def test_a_yaml_file_without_its_module_is_refused(tmp_path) -> None:
    (tmp_path / "ghost.yaml").write_text("{}\n")
    registry: Registry = Registry("strategy", "nas.strategies", tmp_path)
    with pytest.raises(ModuleNotFoundError, match="nas.strategies.ghost"):
        registry.get("ghost")


def test_a_duplicate_name_is_a_bug() -> None:
    registry: Registry = Registry("thing", "nas.strategies")
    registry.register("a")(int)
    with pytest.raises(NasError, match="registered twice"):
        registry.register("a")(str)

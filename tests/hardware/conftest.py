"""A tiny fake space (a few conv units, 81 archs), a fast timer and an empty user profiles dir per test."""

from __future__ import annotations

from functools import partial

import pytest
from torch import nn

from nas.arch import Arch
from nas.hardware.timers import CpuTimer
from nas.space import Decision, LatencyTerm, SearchSpace, SpaceConfig


class FakeConfig(SpaceConfig):
    resolution: int = 8
    num_classes: int = 4
    width: int = 8


class FakeSpace(SearchSpace):
    """Stem conv, four blocks each a 3x3 conv, a 5x5 conv or skipped, pooled linear head."""

    name = "fake"
    config_model = FakeConfig

    def decisions(self) -> list[Decision]:
        return [Decision(f"b{i}.op", ("k3", "k5", "skip")) for i in range(1, 5)]

    def _keys(self) -> dict[str, str]:
        r, w, n = self.config.resolution, self.config.width, self.config.num_classes
        return {
            "stem": f"stem-in{r}x{r}x3-out{r}x{r}x{w}",
            "k3": f"conv-in{r}x{r}x{w}-out{r}x{r}x{w}-k3",
            "k5": f"conv-in{r}x{r}x{w}-out{r}x{r}x{w}-k5",
            "head": f"head-in{r}x{r}x{w}-out{n}",
        }

    def latency_keys(self, arch: Arch) -> list[str]:
        keys = self._keys()
        ops = [arch.choices[f"b{i}.op"] for i in range(1, 5)]
        return [keys["stem"], *(keys[op] for op in ops if op != "skip"), keys["head"]]

    def latency_terms(self) -> list[LatencyTerm]:
        keys = self._keys()

        def block(choices: tuple) -> tuple[str, ...]:
            return () if choices[0] == "skip" else (keys[choices[0]],)

        return [LatencyTerm((), lambda _: (keys["stem"],)),
                *(LatencyTerm((f"b{i}.op",), block) for i in range(1, 5)),
                LatencyTerm((), lambda _: (keys["head"],))]

    @property
    def unit_table(self) -> dict:
        r, w, n = self.config.resolution, self.config.width, self.config.num_classes
        keys = self._keys()
        return {
            keys["stem"]: (lambda: nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.ReLU()), (3, r, r)),
            keys["head"]: (lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w, n)), (w, r, r)),
            **{keys[f"k{k}"]: (partial(_conv, w, k), (w, r, r)) for k in (3, 5)},
        }

    def build(self, arch: Arch) -> nn.Module:
        return nn.Sequential(*(self.unit(k).module for k in self.latency_keys(arch)))


def _conv(width: int, k: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(width, width, k, padding=k // 2), nn.ReLU())


@pytest.fixture(autouse=True)
def user_profiles(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Every hardware test gets an empty user profiles directory of its own (`NAS_PROFILES_DIR`)."""
    path = tmp_path_factory.mktemp("user-profiles")
    monkeypatch.setenv("NAS_PROFILES_DIR", str(path))
    return path


@pytest.fixture
def space() -> FakeSpace:
    return FakeSpace(FakeConfig())


@pytest.fixture
def timer() -> CpuTimer:
    return CpuTimer(threads=1, batch=1, blocks=3, block_ms=1.0, warmup_ms=1.0)

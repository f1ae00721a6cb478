"""A tiny fake space (a few conv units, 81 archs) and a fast timer for the hardware tests."""

from __future__ import annotations

import pytest
from torch import nn

from nas.arch import Arch
from nas.hardware.timers import CpuTimer
from nas.space import Decision, LatencyTerm, SearchSpace, SpaceConfig, Unit


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

    def all_latency_keys(self) -> list[str]:
        return sorted(self._keys().values())

    def latency_terms(self) -> list[LatencyTerm]:
        keys = self._keys()

        def block(choices: tuple) -> tuple[str, ...]:
            return () if choices[0] == "skip" else (keys[choices[0]],)

        return [LatencyTerm((), lambda _: (keys["stem"],)),
                *(LatencyTerm((f"b{i}.op",), block) for i in range(1, 5)),
                LatencyTerm((), lambda _: (keys["head"],))]

    def unit(self, key: str) -> Unit:
        r, w, n = self.config.resolution, self.config.width, self.config.num_classes
        names = {v: k for k, v in self._keys().items()}
        kind = names[key]
        if kind == "stem":
            return Unit(nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.ReLU()), (3, r, r))
        if kind == "head":
            return Unit(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w, n)), (w, r, r))
        k = int(kind[1])
        return Unit(nn.Sequential(nn.Conv2d(w, w, k, padding=k // 2), nn.ReLU()), (w, r, r))

    def build(self, arch: Arch) -> nn.Module:
        return nn.Sequential(*(self.unit(k).module for k in self.latency_keys(arch)))


@pytest.fixture
def space() -> FakeSpace:
    return FakeSpace(FakeConfig())


@pytest.fixture
def timer() -> CpuTimer:
    return CpuTimer(threads=1, batch=1, blocks=3, block_ms=1.0, warmup_ms=1.0)

"""Synthetic latency tables for the one-shot method tests, at any space config (the committed CPU tables are
measured at width 1.0 only, not at the `tiny` presets' width 0.35)."""

from __future__ import annotations

from nas.hardware.table import Entry, LatencyTable, Metadata, TableFile
from nas.space import SearchSpace, load_space


def tiny_space(name: str) -> SearchSpace:
    """`name` at its `<name>_tiny` preset's config, as the supernet contract test builds it."""
    return load_space(name, dict(load_space(name).preset(f"{name}_tiny").config))


def synthetic_table(space: SearchSpace, base_ms: float = 0.5, ms_per_mac: float = 1e-5) -> LatencyTable:
    """A table bound to `space`: each unit costs `base_ms` plus `ms_per_mac` per multiply-accumulate."""
    entries = {k: Entry(mean=base_ms + space.unit_cost(k)[1] * ms_per_mac, std=0.0, count=1)
               for k in space.all_latency_keys()}
    meta = Metadata(space=space.name, space_config=space.config.model_dump(mode="json"), device_id="synthetic",
                    backend="cpu", hardware="synthetic", batch=1, dtype="fp32", threads=1, versions={},
                    measured_at="2026-01-01")
    return LatencyTable(TableFile(metadata=meta, entries=entries), space=space)

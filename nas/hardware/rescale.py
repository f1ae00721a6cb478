"""A table's milliseconds on this host: compare the host's speed with the table's and rescale it.

A table's timings belong to the host they were measured on: another host of the same kind
(same CPU model, same device id) ran the same networks 1.3-1.9x faster, and the PyTorch
ProxylessNAS 32x32 table's reference network stored 9.29 ms and measured 6.24 ms elsewhere.
Every table stores a reference network (`metadata.protocol.network_reference`: its choices
and its `ms`, calibrated by `Timer.calibrated_ms`'s statistic), so `host_scale` times that
network here for a few seconds, single-threaded on the table's backend, and returns
measured / stored. `rescale` multiplies every millisecond of the table by that factor
(entries, correction intercept and entries, fit timings, validation points, and the stored
reference timings, so the rescaled table's `host_scale` here is about 1) and records the
scale, the original table's path and sha256 and when in `metadata.rescaled`. Relative
figures (MAPE, within ±10%, Spearman) do not change. A uniform factor is an approximation:
it assumes the host is faster or slower at every unit alike, which holds for hosts of one
kind that differ in clock, load or neighbours, less for another CPU model.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from nas.errors import NasError, UserError
from nas.hardware.host_speed import remembered
from nas.hardware.schema import SCALE, Rescale
from nas.hardware.store import command_for, table_scale
from nas.hardware.table import LatencyTable

log = logging.getLogger(__name__)

WARN_ABOVE = 0.15
"""`scale_warning` speaks when the host's speed differs from the table's by more than this share."""


def host_scale(table: LatencyTable, seconds: float = 2.0) -> float:
    """This host's time for the table's reference network over the time the table stored (2.0: twice as slow).

    Times the network for about `seconds` (see `Timer.calibrated_ms`); a table without a stored
    reference network, or whose backend this machine lacks, is a `UserError`.
    """
    measured, stored = _time_reference(table, seconds)
    return measured / stored


def scale_warning(table: LatencyTable, seconds: float = 2.0) -> str | None:
    """A one-line warning when this host runs the table's reference network more than `WARN_ABOVE` faster or
    slower than the table says, naming the command that rescales it; None when the speeds agree.

    None, without timing, for a table with no stored reference network or a backend this machine
    lacks (a table for another device prices archs the same wherever the search runs). A timing of
    the same table on this host from the last minutes is reused (`nas.hardware.host_speed`).
    """
    if not _reference(table):
        return None
    try:  # a timing of the last minutes is reused: a search need not wait two seconds each time
        measured, stored = remembered(table.sha256, lambda: _time_reference(table, seconds))
    except UserError as err:
        log.info("host speed of %s not checked: %s", table.source, err)
        return None
    scale = measured / stored
    if abs(scale - 1) <= WARN_ABOVE:
        return None
    pace = f"{1 / scale:.2f}x faster" if scale < 1 else f"{scale:.2f}x slower"
    return (f"latency table {table.source}: this host runs its reference network in {measured:.3g} ms, the table "
            f"says {stored:.3g} ms (scale {scale:.2f}: this host is {pace}); its milliseconds are another host's; "
            f"rescale it with `{rescale_command(table)}`")


def rescale_command(table: LatencyTable) -> str:
    """The command that writes a copy of `table` rescaled to this host (into the user profiles directory)."""
    return f"nas profile --rescale --table {table.path or table.source}"


def rescale(table: LatencyTable, seconds: float = 3.0) -> tuple[LatencyTable, float]:
    """`table` rescaled to this host's speed (not saved) and the factor applied (see the module docstring)."""
    if table.path is None or table.sha256 is None:
        raise NasError("rescale: the table was built in memory; load it from its file first")
    measured, stored = _time_reference(table, seconds)
    factor = measured / stored  # stored > 0: a table's numbers are checked in range when it is loaded
    meta, before = table.metadata, table.metadata.rescaled
    scale = table_scale(table) * factor
    if not SCALE.allows(scale):
        raise UserError(f"{table.source}: this host runs its reference network in {measured:.4g} ms, the table "
                        f"says {stored:.4g} ms: a rescale by {scale:.4g} is out of range ({SCALE.describe()}), so "
                        f"this host is not of the table's kind; profile it here with `{command_for(meta)}`")
    record = Rescale(scale=scale, measured_ms=measured, stored_ms=stored,
                     source=before.source if before else str(table.path),
                     source_sha256=before.source_sha256 if before else table.sha256,
                     source_device_id=before.source_device_id if before else meta.device_id,
                     rescaled_at=datetime.now(UTC).isoformat(timespec="seconds"))
    timer = _timer(table)
    if timer.device_id != meta.device_id:
        log.warning("rescaling %s (measured on %s) to this host, a %s: a uniform factor fits hosts of one kind "
                    "best", table.source, meta.device_id, timer.device_id)
    return scaled(table, factor, record, device_id=timer.device_id, hardware=timer.hardware), factor


def scaled(table: LatencyTable, factor: float, record: Rescale, **metadata: Any) -> LatencyTable:
    """`table` with every millisecond multiplied by `factor`, `metadata.rescaled = record` and `metadata` set."""
    data, meta = table.data, table.metadata
    protocol = dict(meta.protocol)
    if "reference_ms" in protocol:
        protocol["reference_ms"] = protocol["reference_ms"] * factor
    if "network_reference" in protocol:
        protocol["network_reference"] = {**protocol["network_reference"],
                                         "ms": protocol["network_reference"]["ms"] * factor}
    entries = {k: e.model_copy(update={"mean": e.mean * factor, "std": e.std * factor})
               for k, e in data.entries.items()}
    correction = data.correction and data.correction.model_copy(update={
        "intercept_ms": data.correction.intercept_ms * factor,
        "entries": {k: v * factor for k, v in data.correction.entries.items()},
        "fit_ms": [ms * factor for ms in data.correction.fit_ms],
    })
    validation = data.validation and data.validation.model_copy(update={
        "points": [tuple(v * factor for v in point) for point in data.validation.points]})
    return LatencyTable(data.model_copy(update={
        "metadata": meta.model_copy(update={**metadata, "protocol": protocol, "rescaled": record}),
        "entries": entries, "correction": correction, "validation": validation,
    }), table.source)


def _reference(table: LatencyTable) -> dict[str, Any] | None:
    reference = table.metadata.protocol.get("network_reference")
    return reference if isinstance(reference, dict) and "choices" in reference and "ms" in reference else None


def _timer(table: LatencyTable) -> Any:
    """A timer like the one that measured `table`: its backend, threads, batch, dtype and warm-up."""
    from nas.registry import TIMERS

    meta = table.metadata
    warmup = meta.protocol.get("warmup_ms", 20.0)
    return TIMERS.get(meta.backend)(threads=meta.threads, batch=meta.batch, dtype=meta.dtype, warmup_ms=warmup)


def _time_reference(table: LatencyTable, seconds: float) -> tuple[float, float]:
    """(ms measured here, ms stored) of the table's reference network."""
    from nas.space import load_space

    reference = _reference(table)
    if reference is None:
        raise UserError(f"{table.source}: no reference network stored (metadata.protocol.network_reference), so "
                        f"this host's speed cannot be compared with it; re-profile it with "
                        f"`{command_for(table.metadata)}`")
    meta = table.metadata
    space = load_space(meta.space, meta.space_config)
    arch = space.make_arch(reference["choices"])
    resolution = space.input_resolution(arch)
    measured = _timer(table).calibrated_ms(space.build(arch), (3, resolution, resolution), seconds,
                                           key=f"arch-{arch.short_hash}")
    log.info("reference network of %s: %.4g ms here, %.4g ms in the table", table.source, measured, reference["ms"])
    return measured, float(reference["ms"])


__all__ = ["WARN_ABOVE", "host_scale", "rescale", "rescale_command", "scale_warning", "scaled"]

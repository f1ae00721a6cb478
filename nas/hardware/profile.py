"""Profile a space on a device: time every unit, fit a correction, validate on held-out archs.

`profile` times every latency key of the space in isolation (`space.unit(key)`), then
times a FIT set of random archs end to end and fits a correction (`nas.hardware.fit`:
by default `fit_ridge` kept to a positive prediction for the space's cheapest arch), then
times a separate VALIDATION set of random archs end to end, twice, and stores everything
in one table file.

Units are timed against the timer's small unit reference; every end-to-end timing (fit
and validation) against one fixed random arch of the space (a third seed stream), whose
network reads its weights from the same caches as the archs it normalises (see
`nas.hardware.protocol`). The validation archs are drawn from another seed stream and
never overlap the fit archs. Validation compares predictions with the mean of two
independent end-to-end timings; the noise figure is the median relative difference between those two.
`correct` is a parameter: any function from (entries, rows) to a `Correction` works. A
table keeps the fit timings (`Correction.fit_ms`), so `refit` tries another correction
on the same measurements without timing anything. A table that misses the accuracy bar
(`BAR`) says which criterion failed (`missed_criteria`).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nas.errors import NasError, UserError
from nas.evaluate.metrics import count_macs, count_params
from nas.hardware.fit import CorrectionFn, Row, fit_none, fit_positive, fit_ridge
from nas.hardware.schema import Correction, Entry, Figures, Metadata, Report, TableFile
from nas.hardware.store import write_table
from nas.hardware.table import LatencyTable
from nas.hardware.timers import Reference, Timer
from nas.limits import MAX_N_VALIDATE, SEED_LIMIT, check_range

if TYPE_CHECKING:
    from nas.arch import Arch
    from nas.space import SearchSpace

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""Called as progress(stage, done, total); stages: units, fit, validate."""

BAR = {"within_10": 0.95, "spearman": 0.95}


def profile(
    space: SearchSpace,
    timer: Timer,
    batch: int | None,
    out_path: str | Path,
    n_validate: int = 100,
    seed: int = 0,
    progress: Progress | None = None,
    *,
    n_fit: int = 60,
    correct: CorrectionFn | None = None,
) -> LatencyTable:
    """Measure the latency table of `space` with `timer`, fit, validate and write it atomically.

    The fit archs and the first timing of the validation archs are evenly interleaved, so a slow
    drift of the machine touches both sets alike; the second timing of the validation archs
    follows in reverse order.

    Args:
        batch: must equal the timer's batch (None takes it), which its device id names.
        n_fit: archs timed end to end to fit the correction (0: no correction).
        correct: the correction method; by default `fit_ridge` kept positive on `space` (`fit_positive`).

    On a full disk, nothing is written to `out_path` and the measured table is saved under the
    system temp directory; the error says where (`nas.hardware.store.write_table`).
    """
    if batch is not None and batch != timer.batch:
        raise NasError(f"profile at batch {batch} with a timer built for batch {timer.batch}")
    _check_n_validate(n_validate, space, n_fit)
    check_range("--seed", seed, 0, SEED_LIMIT - 1)
    started = time.perf_counter()
    keys = space.all_latency_keys()
    entries = {}
    for i, key in enumerate(keys):
        unit = space.unit(key)
        timing = timer.time(unit.module, unit.input_shape)
        entries[key] = Entry(mean=_round(timing.mean_ms), std=_round(timing.std_ms), count=timing.count,
                             params=count_params(unit.module), macs=count_macs(unit.module, unit.input_shape))
        _tick(progress, "units", i + 1, len(keys))
    log.info("timed %d units of %s on %s", len(keys), space.name, timer.device_id)
    reference_arch = space.sample(np.random.default_rng([seed, 2]))
    reference = _network_reference(space, timer, reference_arch)
    table = LatencyTable(TableFile(metadata=_metadata(space, timer, reference_arch, reference), entries=entries))

    fit_archs = _fit_archs(space, seed, n_fit) if n_fit > 0 else []
    archs = _draw(space, np.random.default_rng([seed, 1]), n_validate, {a.hash for a in fit_archs})
    both = _interleave(fit_archs, archs)
    timed = dict(zip((a.hash for a in both), _time_archs(space, timer, both, progress, "archs", reference),
                     strict=True))
    if fit_archs:
        rows = [(space.latency_keys(a), _round(timed[a.hash])) for a in fit_archs]  # as stored, for refit
        table = table.replace(correction=_stored_correction((correct or fit_positive(space))(entries, rows),
                                                            seed, n_fit))
    first = np.array([timed[a.hash] for a in archs])
    report = _validation(table, space, timer, archs, seed, progress, reference, first)
    table = table.replace(validation=report.model_copy(update={"seconds": round(time.perf_counter() - started, 1)}))
    write_table(table, Path(out_path))
    return table


def validate(
    table: LatencyTable,
    space: SearchSpace,
    timer: Timer,
    n: int = 100,
    seed: int | None = None,
    progress: Progress | None = None,
    out_path: str | Path | None = None,
) -> dict[str, Any]:
    """Re-run only the validation of `table` and write the table with the new report atomically.

    Args:
        seed: seed of the validation archs; None reuses the seed the table was profiled with.
        out_path: where to write; the file the table was loaded from by default (the CLI passes a
            path in the user profiles directory unless `--out` names one).
    """
    target = out_path if out_path is not None else table.path
    if target is None:
        raise NasError("validate: a table built in memory needs out_path")
    _check_n_validate(n, space, 0)
    table.check_matches(space, timer.batch)
    if timer.device_id != table.metadata.device_id:
        raise UserError(f"{table.source}: table was measured on {table.metadata.device_id}, this timer is "
                        f"{timer.device_id}; validate on the device it was measured on")
    params = table.correction.params if table.correction else {}
    if seed is None:
        seed = params.get("seed", 0)
    protocol = table.metadata.protocol
    if timer.reference and "reference_ms" in protocol:
        timer.reference_ms = protocol["reference_ms"]  # the table's scale, not a new one
    reference = None
    if timer.reference and "network_reference" in protocol:
        stored = protocol["network_reference"]
        reference = _network_reference(space, timer, space.make_arch(stored["choices"]), stored["ms"])
    started = time.perf_counter()
    fit_hashes = set()
    if params.get("n_fit"):
        fit_hashes = {a.hash for a in _fit_archs(space, params["seed"], params["n_fit"])}
    archs = _draw(space, np.random.default_rng([seed, 1]), n, fit_hashes)
    report = _validation(table, space, timer, archs, seed, progress, reference)
    report = report.model_copy(update={"seconds": round(time.perf_counter() - started, 1)})
    write_table(table.replace(validation=report), Path(target))
    return report.model_dump()


def refit(table: LatencyTable, space: SearchSpace, correct: CorrectionFn | None = None) -> LatencyTable:
    """`table` with its correction refitted by `correct` on its stored fit timings, and its report re-scored.

    Nothing is timed: the fit and validation archs are drawn again from the table's seed, and
    the validation's measured latencies and noise are kept. The result is not saved.
    `correct` defaults to `fit_ridge` kept positive on `space` (`fit_positive`).
    """
    fitted, report = table.correction, table.validation
    if fitted is None or not fitted.fit_ms or report is None or not report.points:
        raise UserError(f"{table.source}: refit needs a table with stored fit timings and validation points; "
                        f"profile it again")
    seed, n_fit = fitted.params["seed"], fitted.params["n_fit"]
    fit_archs = _fit_archs(space, seed, n_fit)
    rows = [(space.latency_keys(a), ms) for a, ms in zip(fit_archs, fitted.fit_ms, strict=True)]
    fitted = (correct or fit_positive(space))(table.data.entries, rows)
    table = table.replace(correction=_stored_correction(fitted, seed, n_fit))
    archs = _draw(space, np.random.default_rng([report.seed, 1]), report.n_archs, {a.hash for a in fit_archs})
    keys = [space.latency_keys(a) for a in archs]
    measured = np.array([m for m, _, _ in report.points])
    corrected = np.array([table.predict_keys(k) for k in keys])
    figures = _figures(corrected, measured)
    return table.replace(validation=report.model_copy(update={
        **figures.model_dump(),
        "passes": not missed_criteria(figures),
        "points": [(m, _round(c), v) for (m, _, v), c in zip(report.points, corrected, strict=True)],
    }))


def _stored_correction(fitted: Correction, seed: int, n_fit: int) -> Correction:
    """`fitted` rounded for the table file, with the seed and size of its fit set."""
    return fitted.model_copy(update={
        "intercept_ms": _round(fitted.intercept_ms),
        "entries": {k: _round(v) for k, v in fitted.entries.items()},
        "params": {**fitted.params, "seed": seed, "n_fit": n_fit},
    })


def _validation(
    table: LatencyTable, space: SearchSpace, timer: Timer, archs: list[Arch], seed: int,
    progress: Progress | None, reference: Reference | None, first: np.ndarray | None = None,
) -> Report:
    """Time held-out `archs` (again, when a `first` timing is given) and score the corrected and naive tables."""
    n = len(archs)
    if first is None:
        first = _time_archs(space, timer, archs, progress, "validate", reference)
    second = _time_archs(space, timer, archs[::-1], progress, "validate again", reference)[::-1]
    measured = (first + second) / 2
    keys = [space.latency_keys(a) for a in archs]
    corrected = np.array([table.predict_keys(k) for k in keys])
    naive = np.array([table.predict_naive(k) for k in keys])
    figures = _figures(corrected, measured)
    report = Report(
        **figures.model_dump(),
        n_archs=n,
        noise=_round(np.median(np.abs(first - second) / measured) * 100),
        naive=_figures(naive, measured),
        passes=not missed_criteria(figures),
        seed=seed,
        measured_at=_now(),
        points=[(_round(m), _round(c), _round(v)) for m, c, v in zip(measured, corrected, naive, strict=True)],
    )
    _log_report(report, table.metadata.device_id)
    return report


def _check_n_validate(n: int, space: SearchSpace, n_fit: int) -> None:
    """Refuse an `n` out of range, or more archs than the space has, before anything is timed."""
    if n < 2:
        raise UserError(f"--n-validate must be at least 2 (a rank correlation needs two archs); got {n}")
    check_range("--n-validate", n, 2, MAX_N_VALIDATE)
    if n + n_fit > space.size():
        raise UserError(f"--n-validate {n}: {space.name} has only {space.size()} archs, and {n_fit} more are "
                        f"the fit set; allowed: at most {max(space.size() - n_fit, 0)}")


def _figures(predicted: np.ndarray, measured: np.ndarray) -> Figures:
    from scipy.stats import spearmanr

    rel = np.abs(predicted - measured) / measured
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: handled below
        rho = float(spearmanr(predicted, measured).statistic)
    if not np.isfinite(rho):
        rho = 0.0  # constant predictions (or timings) rank nothing; a table stores finite numbers only
    return Figures(mape=_round(rel.mean() * 100), within_5=float((rel <= 0.05).mean()),
                   within_10=float((rel <= 0.10).mean()), spearman=_round(rho))


def missed_criteria(figures: Figures | Mapping[str, Any]) -> list[str]:
    """The accuracy criteria (`BAR`) that `figures` miss, each as `within ±10%: 91% < 95%`; empty when it passes."""
    values = figures if isinstance(figures, Mapping) else figures.model_dump()
    missed = []
    if values["within_10"] < BAR["within_10"]:
        missed.append(f"within ±10%: {values['within_10']:.0%} < {BAR['within_10']:.0%}")
    if not values["spearman"] >= BAR["spearman"]:  # a NaN correlation (constant predictions) misses too
        missed.append(f"Spearman: {values['spearman']:.3f} < {BAR['spearman']:.2f}")
    return missed


def _log_report(report: Report, device_id: str) -> None:
    line = (f"within 10% {report.within_10:.2f} (naive {report.naive.within_10:.2f}), spearman "
            f"{report.spearman:.3f} (naive {report.naive.spearman:.3f}), MAPE {report.mape:.1f}% "
            f"(naive {report.naive.mape:.1f}%), noise {report.noise:.1f}%, {report.n_archs} archs")
    if report.passes:
        log.info("latency table %s passes: %s", device_id, line)
    else:
        log.warning("LATENCY TABLE %s FAILS ITS ACCURACY BAR (%s): %s", device_id,
                    "; ".join(missed_criteria(report)), line)


# -- helpers ------------------------------------------------------------------------------
def _draw(space: SearchSpace, rng: np.random.Generator, n: int, exclude: set[str]) -> list[Arch]:
    """`n` distinct random archs, none in `exclude` (bounded number of draws)."""
    archs, seen, tries = [], set(exclude), 100 * n + 100
    for _ in range(tries):
        if len(archs) == n:
            break
        arch = space.sample(rng)
        if arch.hash not in seen:
            seen.add(arch.hash)
            archs.append(arch)
    if len(archs) < n:
        raise UserError(f"{space.name}: only {len(archs)} distinct archs (of {n} wanted) after {tries} draws; "
                        f"lower --n-validate")
    return archs


def _fit_archs(space: SearchSpace, seed: int, n_fit: int) -> list[Arch]:
    """The fit set: `n_fit` random archs (seed stream [seed, 0]).

    Random archs only, like the validation set. Fitting on the cheapest and dearest arch as
    well was tried: on ONNX Runtime at 32x32, where time grows faster than size over the
    whole space, a line through both extremes and the random archs misfits the random ones
    (within +-10%: 80% against 94% on the same timings), so extremes are left to
    extrapolation; `LatencyTable.lower_bound` shows how far down it reaches.
    """
    return _draw(space, np.random.default_rng([seed, 0]), n_fit, set())


def _interleave(first: Sequence[Arch], second: Sequence[Arch]) -> list[Arch]:
    """Both lists merged evenly: each item at its relative position in its own list (ties: `first`'s)."""
    spots = [((i + 0.5) / len(first), 0, a) for i, a in enumerate(first)]
    spots += [((i + 0.5) / len(second), 1, a) for i, a in enumerate(second)]
    return [a for _, _, a in sorted(spots, key=lambda spot: spot[:2])]


def _input_shape(space: SearchSpace, arch: Arch) -> tuple[int, int, int]:
    r = space.input_resolution(arch)  # the arch's own: a space may search the resolution
    return (3, r, r)


def _network_reference(space: SearchSpace, timer: Timer, arch: Arch, ms: float | None = None) -> Reference | None:
    """The reference for end-to-end timings: `arch` built, calibrated unless `ms` is given.

    None for a timer that does not normalise.
    """
    if not timer.reference:
        return None
    return timer.network_reference(space.build(arch), _input_shape(space, arch), f"arch-{arch.short_hash}", ms)


def _time_archs(
    space: SearchSpace, timer: Timer, archs: Sequence[Arch], progress: Progress | None, stage: str,
    reference: Reference | None,
) -> np.ndarray:
    """End-to-end latency (ms) of each arch's built network, normalised by the network `reference`."""
    times = []
    for i, arch in enumerate(archs):
        timing = timer.time(space.build(arch), _input_shape(space, arch), key=arch.hash, reference=reference)
        times.append(timing.mean_ms)
        _tick(progress, stage, i + 1, len(archs))
    return np.array(times)


def _metadata(space: SearchSpace, timer: Timer, reference_arch: Arch, reference: Reference | None) -> Metadata:
    protocol = timer.protocol()
    if reference is not None:
        protocol["network_reference"] = {"choices": dict(reference_arch.choices), "ms": reference.ms,
                                         "statistic": "end-to-end timings: ratio to this network, no refill"}
    return Metadata(
        space=space.name, space_config=space.config.model_dump(mode="json"), device_id=timer.device_id,
        backend=timer.name, hardware=timer.hardware, batch=timer.batch, dtype=timer.dtype,
        threads=timer.threads, versions=timer.versions(), measured_at=_now(), protocol=protocol,
    )


def _round(value: float) -> float:
    """Six significant digits: far below the timing noise, and the table files diff readably."""
    return float(f"{float(value):.6g}")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _tick(progress: Progress | None, stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(stage, done, total)


__all__ = ["BAR", "CorrectionFn", "Progress", "Row", "fit_none", "fit_ridge", "missed_criteria", "profile", "refit",
           "validate"]

"""`LatencyTable`: a measured latency lookup table for one space, device and batch size.

A table file (`<device-id>/<space>-r<resolution>.yaml`, see `nas.hardware.store` for where
tables live) holds the metadata of the measurement (space and its config, device id, backend, batch, dtype,
threads, library versions, date, timing protocol), one entry per latency key (the
isolated timing of that unit: mean, std, count), the fitted correction (an intercept
and one corrected value per key, see `nas.hardware.profile`) and the validation
report. `predict(arch)` is the intercept plus the sum of the corrected values of the
arch's keys (the plain isolated means when there is no correction): dict look-ups
only, so it is cheap enough to call inside a search loop; `predict_many` prices a batch of
archs with the same sums, taken per latency term over arrays (`nas.pricing`). Files are written to a
temp file in the same directory and `os.replace`d, so a table is never half-written.

A table is checked when it is built or loaded: every number must be of its field's type and
in its range (`nas.hardware.schema.RULES`: finite, reference timings positive, counts at least
one, ...), and once the table is bound to its space (`load(path, space)`, or the first
`predict`) the cheapest arch must be predicted to take a positive time (`lower_bound`). A
table failing either is a `UserError` naming the file, the field's key path, the value (cut
short), the allowed range and the fix, before any search uses it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from nas.config import parse
from nas.errors import UserError
from nas.hardware.schema import Correction, Entry, Figures, Metadata, Report, Rescale, TableFile, find_bad_number

if TYPE_CHECKING:
    import numpy as np
    import torch

    from nas.arch import Arch
    from nas.space import SearchSpace


class LatencyTable:
    """A latency lookup table, optionally bound to its space (`load(path, space)`).

    Args:
        data: the parsed table; every number must be in its range (`nas.hardware.schema.RULES`).
        source: where it came from, for messages (a path or `<memory>`).
        space: the space whose archs it prices (checked, with a positive `lower_bound`); when
            absent, `predict` loads it by name.
        path: the file it was loaded from or saved to (None in memory).
        sha256: sha256 of that file's bytes as read or written.
    """

    def __init__(self, data: TableFile, source: str = "<memory>", space: SearchSpace | None = None, *,
                 path: Path | None = None, sha256: str | None = None) -> None:
        _check_numbers(data.model_dump(), source, data.metadata)
        if data.correction is not None and set(data.correction.entries) != set(data.entries):
            extra = sorted(set(data.correction.entries) ^ set(data.entries))
            raise UserError(f"{source}: correction keys differ from entry keys ({len(extra)} differ, "
                            f"e.g. {extra[0]!r}); re-profile the table")
        self.data = data
        self.source = source
        self.path = path
        self.sha256 = sha256
        self._space: SearchSpace | None = None
        self._costs_cache: dict[int, list[np.ndarray]] = {}
        if data.correction is None:
            self._values = {k: e.mean for k, e in data.entries.items()}
            self._intercept = 0.0
        else:
            self._values = dict(data.correction.entries)
            self._intercept = data.correction.intercept_ms
        if space is not None:
            self._bind(space)

    # -- files ------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, space: SearchSpace | None = None, batch: int | None = None) -> LatencyTable:
        """Read a table file, checked against `space` and `batch` when given.

        A missing, corrupt, wrong-shaped or poisoned (a number of the wrong type or out of its
        range, a non-positive lower bound) file is a `UserError` naming it.
        """
        path = Path(path)
        raw, data = _read_yaml(path)
        if not isinstance(data, dict):
            raise UserError(f"{path}: not a latency table (expected a mapping with metadata and entries, "
                            f"got {type(data).__name__}); re-profile it with `nas profile`")
        _check_numbers(data, str(path), _metadata_of(data))
        try:
            parsed = parse(TableFile, data, str(path))
        except UserError as err:
            raise UserError(f"{err}; re-profile the table with `nas profile` or restore the file") from None
        table = cls(parsed, str(path), path=path.resolve(), sha256=hashlib.sha256(raw).hexdigest())
        if space is not None:
            table.check_matches(space, batch)
            table._bind(space)
        return table

    def save(self, path: str | Path) -> None:
        """Write the table atomically (temp file in the same directory, then `os.replace`)."""
        from nas.run_dir import write_atomic

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A table never rescaled is written without the key, as before it existed.
        unscaled = {"metadata": {"rescaled"}} if self.data.metadata.rescaled is None else None
        text = yaml.safe_dump(self.data.model_dump(exclude=unscaled), sort_keys=True)
        write_atomic(path, text)
        self.source, self.path, self.sha256 = str(path), path.resolve(), hashlib.sha256(text.encode()).hexdigest()

    def replace(self, **fields: Any) -> LatencyTable:
        """A copy with top-level fields (`metadata`, `entries`, `correction`, `validation`) replaced, not saved."""
        return LatencyTable(self.data.model_copy(update=fields), self.source, self._space)

    # -- views --------------------------------------------------------------------------
    @property
    def metadata(self) -> Metadata:
        return self.data.metadata

    @property
    def entries(self) -> Mapping[str, Entry]:
        return self.data.entries

    @property
    def correction(self) -> Correction | None:
        return self.data.correction

    @property
    def validation(self) -> Report | None:
        return self.data.validation

    # -- prediction ---------------------------------------------------------------------
    def predict(self, arch: Arch) -> float:
        """Predicted latency of `arch` in ms."""
        meta = self.data.metadata
        if arch.space != meta.space or arch.config != meta.space_config:
            raise UserError(f"{self.source}: table is for space {meta.space} at {meta.space_config}; "
                            f"arch {arch.short_hash} is {arch.space} at {dict(arch.config)}")
        space = self._space
        if space is None:
            from nas.space import space_of

            space = space_of(arch)
            self._bind(space)
        return self.predict_keys(space.latency_keys(arch), what=f"arch {arch.short_hash}")

    def predict_keys(self, keys: Iterable[str], what: str = "these keys") -> float:
        """Intercept plus the sum of the (corrected) entries of `keys`."""
        values = self._values
        try:
            return self._intercept + sum([values[k] for k in keys])
        except KeyError:
            self._raise_missing(list(keys), what)
            raise

    def predict_many(self, space: SearchSpace, indices: np.ndarray) -> np.ndarray:
        """Predicted latency (ms) of many archs of `space` at once, given as their `nas.pricing.choice_indices`:
        the intercept plus, per latency term, its cost of each arch's choices (equal to `predict`)."""
        import numpy as np

        from nas.pricing import sum_terms

        if space is not self._space:
            self.check_matches(space)
        return sum_terms(space, self._term_costs(space), indices, np.full(len(indices), self._intercept))

    def expected_latency(self, probs: Mapping[str, torch.Tensor], space: SearchSpace | None = None) -> torch.Tensor:
        """Expected latency (ms) of an arch whose decisions are drawn independently from `probs`.

        A differentiable torch expression for one-shot methods: the intercept plus, for every
        latency term of the space (`SearchSpace.latency_terms`), the cost of each combination of
        the term's choices weighted by the product of their probabilities. Exact under
        independent decisions; with one-hot `probs` it equals `predict` of that arch.

        Args:
            probs: decision name -> probabilities over its choices (in the decision's order),
                one 1-D tensor each; decisions that no latency term reads may be left out.
            space: the space of the table (the bound one, or loaded by name, by default).
        """
        import torch

        if space is None:
            space = self._space or _load_table_space(self.data.metadata)
        elif space is not self._space:
            self.check_matches(space)
        decisions = {d.name: d for d in space.decisions()}
        total = None
        for term, cost in zip(space.latency_terms(), self._term_costs(space), strict=True):
            value = torch.as_tensor(cost)
            for name in reversed(term.decisions):  # contract the last axis with its probabilities
                p = probs.get(name)
                allowed = len(decisions[name].choices)
                if p is None or p.dim() != 1 or p.shape[0] != allowed:
                    got = "nothing" if p is None else f"shape {tuple(p.shape)}"
                    raise UserError(f"expected latency: decision {name!r} needs a 1-D tensor of {allowed} "
                                    f"probabilities ({', '.join(map(str, decisions[name].choices))}); got {got}")
                value = value.to(p.dtype) @ p
            total = value if total is None else total + value
        return total + self._intercept

    def lower_bound(self, space: SearchSpace | None = None) -> float:
        """A lower bound (ms) of the predicted latency of every arch of the space: the intercept plus each
        latency term's cheapest combination (exact where terms share no decisions).

        A fitted intercept may be negative (see `nas.hardware.fit`), so this is what shows that
        no arch is predicted to take no time; a bound table has a positive one.
        """
        if space is None:
            space = self._space or _load_table_space(self.data.metadata)
        elif space is not self._space:
            self.check_matches(space)
        return self._intercept + sum(float(cost.min()) for cost in self._term_costs(space))

    def _term_costs(self, space: SearchSpace) -> list[np.ndarray]:
        """Per term, the cost (ms) of every combination of its decisions' choices, cached per space."""
        cached = self._costs_cache.get(id(space))
        if cached is None:
            self._raise_missing(space.all_latency_keys(), f"space {space.name}")
            cached = self._costs_cache[id(space)] = term_costs(self._values, space)
        return cached

    def _bind(self, space: SearchSpace) -> None:
        """Price `space`'s archs from now on, once the cheapest of them is predicted a positive time."""
        self.check_matches(space)
        bound = self.lower_bound(space)
        if not bound > 0:
            field = "correction.intercept_ms" if self.data.correction else "entries"
            raise UserError(
                f"{self.source}: predicts {bound:.4g} ms for the cheapest {space.name} arch ({field} = "
                f"{self._intercept:.6g}); a latency table must predict a positive time for every arch; "
                f"re-profile it with `{_fix_command(self.data.metadata, space)}`")
        self._space = space

    def predict_naive(self, keys: Iterable[str]) -> float:
        """Plain sum of the isolated timings of `keys` (no correction)."""
        entries = self.data.entries
        try:
            return sum(entries[k].mean for k in keys)
        except KeyError:
            self._raise_missing(list(keys), "these keys")
            raise

    def _raise_missing(self, keys: list[str], what: str) -> None:
        missing = sorted({k for k in keys if k not in self._values})
        if missing:
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise UserError(
                f"{self.source}: latency table lacks {len(missing)} of the {len(set(keys))} keys of {what} "
                f"({shown}); re-profile with `{_fix_command(self.data.metadata, self._space)}`"
            )

    # -- matching -----------------------------------------------------------------------
    def check_covers(self, space: SearchSpace) -> None:
        """Refuse a table lacking keys some arch of `space` needs, before a search prices any arch."""
        self._raise_missing(space.all_latency_keys(), f"space {space.name}")

    def check_matches(self, space: SearchSpace, batch: int | None = None) -> None:
        """Refuse a table measured for another space, space config (resolution, classes, ...) or batch."""
        meta = self.data.metadata
        fix = f"profile it with `{_fix_command(meta, space, batch)}`"
        if meta.space != space.name:
            raise UserError(f"{self.source}: table is for space {meta.space!r}, not {space.name!r}; {fix}")
        config = space.config.model_dump(mode="json")
        if meta.space_config != config:
            diff = sorted(k for k in set(config) | set(meta.space_config)
                          if config.get(k) != meta.space_config.get(k))
            shown = ", ".join(f"{k}={meta.space_config.get(k)!r} (want {config.get(k)!r})" for k in diff)
            raise UserError(f"{self.source}: table was measured at another {space.name} config: {shown}; {fix}")
        if batch is not None and batch != meta.batch:
            raise UserError(f"{self.source}: table was measured at batch {meta.batch}, not {batch}; {fix}")


def term_costs(values: Mapping[str, float], space: SearchSpace) -> list[np.ndarray]:
    """Per latency term of `space`, the summed `values` (ms) of every combination of its decisions' choices."""
    from nas.pricing import term_arrays

    return term_arrays(space, lambda keys: sum(values[k] for k in keys))


def _load_table_space(meta: Metadata) -> SearchSpace:
    from nas.space import load_space

    return load_space(meta.space, meta.space_config)


def _fix_command(meta: Metadata | None, space: SearchSpace | None = None, batch: int | None = None) -> str:
    """The `nas profile` command that measures the table `meta` describes (for `space` and `batch` when given)."""
    from nas.hardware.store import command_for

    return command_for(meta, space, batch)


def _read_yaml(path: Path) -> tuple[bytes, Any]:
    """The bytes of a YAML file and its parsed content; an unreadable or malformed file is a `UserError`."""
    from nas.files import check_regular

    try:
        check_regular(path, "latency table")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (not UTF-8); expected YAML") from None
    from nas.files import parse_yaml

    return raw, parse_yaml(text, str(path))  # bounded: size, depth, aliases


def _check_numbers(data: Any, source: str, meta: Metadata | None) -> None:
    """Refuse a table (as plain data) with a number of the wrong type, out of its range or missing.

    `meta` names the fix command, unless the bad number is in the metadata itself (a batch of 0
    must not make the command say `--batch 0`).
    """
    bad = find_bad_number(data)
    if bad is None:
        return
    if bad.path.startswith("metadata."):
        meta = None
    raise UserError(f"{source}: {bad.describe()}; re-profile it with `{_fix_command(meta)}`")


def _metadata_of(data: Mapping[str, Any]) -> Metadata | None:
    """The table's metadata when it parses on its own (for the fix command of an error), else None."""
    from pydantic import ValidationError

    try:
        return Metadata.model_validate(data.get("metadata"))
    except ValidationError:
        return None


def __getattr__(name: str) -> Any:
    """`resolve_table`, `profile_command` and `table_path` moved to `nas.hardware.store`; old imports keep working."""
    if name in ("profile_command", "resolve_table", "table_path"):
        from nas.hardware import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Correction",
    "Entry",
    "Figures",
    "LatencyTable",
    "Metadata",
    "Report",
    "Rescale",
    "TableFile",
    "term_costs",
]

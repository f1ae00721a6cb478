"""Poisoned latency tables: every numeric field, set to 0, -1, nan, inf, 1e308, a string, a list or left out, is
loaded or refused by its range, and a refusal is one line naming the file, the key path, the value and the range."""

from __future__ import annotations

import math
import types
import typing

import pytest
import torch
import yaml
from pydantic import BaseModel

from nas.errors import UserError
from nas.hardware.rescale import scaled
from nas.hardware.schema import (
    MAX_MS,
    RULES,
    Correction,
    Each,
    Entry,
    Figures,
    Metadata,
    Range,
    Report,
    Rescale,
    TableFile,
    find_bad_number,
)
from nas.hardware.table import LatencyTable

KEY = "conv-in8x8x8-out8x8x8-k3"
POISONS = {"zero": 0, "minus-one": -1, "nan": math.nan, "inf": math.inf, "huge": 1e308, "string": "0.5",
           "list": [1.0], "missing": None}

# Every numeric field of a full table: its key path and the poisons it accepts (all others are refused).
FROM_ZERO, POSITIVE, SIGNED = {"zero"}, set(), {"zero", "minus-one"}
FIELDS = [
    ("metadata.batch", set()),
    ("metadata.threads", set()),
    ("metadata.protocol.blocks", {"missing"}),
    ("metadata.protocol.block_ms", {"missing"}),
    ("metadata.protocol.warmup_ms", {"zero", "missing"}),
    ("metadata.protocol.budget_ms", {"missing"}),
    ("metadata.protocol.reference_ms", {"missing"}),
    ("metadata.protocol.network_reference.ms", POSITIVE),  # the finding: 0 divided by zero in rescale
    ("metadata.rescaled.scale", set()),
    ("metadata.rescaled.measured_ms", POSITIVE),
    ("metadata.rescaled.stored_ms", POSITIVE),
    (f"entries.{KEY}.mean", FROM_ZERO),
    (f"entries.{KEY}.std", FROM_ZERO),
    (f"entries.{KEY}.count", POSITIVE),
    (f"entries.{KEY}.params", {"zero", "missing"}),
    (f"entries.{KEY}.macs", {"zero", "missing"}),
    ("correction.intercept_ms", SIGNED),
    (f"correction.entries.{KEY}", FROM_ZERO),
    ("correction.fit_ms.1", POSITIVE),
    ("correction.params.scale", {"zero", "missing"}),
    ("correction.params.ms_per_mparam", {"zero", "missing"}),
    ("correction.params.ms_per_mmac", {"zero", "missing"}),
    ("correction.params.ridge", {"zero", "inf", "huge", "missing"}),  # inf: no per-key stage
    ("correction.params.cv_mape", {"zero", "missing"}),
    ("correction.params.min_intercept", {"zero", "minus-one", "missing"}),
    ("correction.params.n_fit", {"zero", "missing"}),
    ("correction.params.seed", {"zero", "missing"}),
    ("validation.mape", FROM_ZERO),
    ("validation.within_5", FROM_ZERO),
    ("validation.within_10", FROM_ZERO),
    ("validation.spearman", SIGNED),
    ("validation.naive.mape", FROM_ZERO),
    ("validation.naive.spearman", SIGNED),
    ("validation.n_archs", set()),
    ("validation.noise", FROM_ZERO),
    ("validation.seed", {"zero"}),
    ("validation.seconds", {"zero", "missing"}),
    ("validation.points.1.0", POSITIVE),  # measured
    ("validation.points.1.1", SIGNED),  # predicted (a fitted intercept may be negative)
    ("validation.points.1.2", FROM_ZERO),  # naive
    ("metadata.space_config.resolution", {"zero", "minus-one", "huge", "string", "list", "missing"}),  # see below
]
# A list item cannot be left out, only the list shortened.
CASES = [(f, a, p) for f, a in FIELDS for p in POISONS if not (p == "missing" and f.split(".")[-1].isdigit())]


def full_table(space) -> LatencyTable:
    """A table with every optional part: protocol with a network reference, rescale record, fit, validation."""
    entries = {k: Entry(mean=0.1, std=0.01, count=90, params=1000, macs=20000) for k in space.all_latency_keys()}
    params = {"scale": 1.1, "ms_per_mparam": 0.2, "ms_per_mmac": 0.01, "ridge": 1.0, "cv_mape": 2.0,
              "min_intercept": -0.1, "n_fit": 3, "seed": 0}
    correction = Correction(method="ridge", intercept_ms=0.05, entries={k: 0.12 for k in entries}, params=params,
                            fit_ms=[0.5, 0.6, 0.7])
    protocol = {"blocks": 21, "block_ms": 5.0, "warmup_ms": 20.0, "budget_ms": 300.0, "reference": True,
                "reference_ms": 0.3, "allocator": "glibc", "statistic": "median",
                "network_reference": {"choices": {"b1.op": "k3"}, "ms": 0.5, "statistic": "ratio"}}
    rescaled = Rescale(scale=1.5, measured_ms=0.75, stored_ms=0.5, source="t.yaml", source_sha256="0" * 64,
                       source_device_id="dev", rescaled_at="2026-01-01T00:00:00+00:00")
    meta = Metadata(space=space.name, space_config=space.config.model_dump(mode="json"), device_id="test-dev",
                    backend="cpu", hardware="test cpu", batch=1, dtype="fp32", threads=1,
                    versions={"torch": torch.__version__}, measured_at="2026-01-01T00:00:00+00:00",
                    protocol=protocol, rescaled=rescaled)
    figures = Figures(mape=1.0, within_5=0.9, within_10=1.0, spearman=0.99)
    report = Report(**figures.model_dump(), n_archs=3, noise=1.0, naive=figures, passes=True, seed=0,
                    measured_at="2026-01-01T00:00:00+00:00", seconds=1.5,
                    points=[(1.0, 1.01, 0.9), (2.0, 2.1, 1.8), (3.0, 2.9, 2.5)])
    return LatencyTable(TableFile(metadata=meta, entries=entries, correction=correction, validation=report))


def _plain(space) -> dict:
    """The full table as the plain data of its file (lists, not tuples)."""
    return yaml.safe_load(yaml.safe_dump(full_table(space).data.model_dump(), sort_keys=True))


def _poison(data: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    elif value is None:
        del node[last]
    else:
        node[last] = value


def _shown_path(path: str) -> str:
    """`validation.points.1.0` as the message writes it: `validation.points[1][0]`."""
    parts = path.split(".")
    return ".".join(p for p in parts if not p.isdigit()) + "".join(f"[{p}]" for p in parts if p.isdigit())


def test_the_full_table_loads(space, tmp_path):
    path = tmp_path / "fake-r8.yaml"
    path.write_text(yaml.safe_dump(_plain(space), sort_keys=True))
    assert LatencyTable.load(path, space).metadata.rescaled.scale == 1.5


@pytest.mark.parametrize(("field", "accepts", "poison"), CASES, ids=[f"{f}-{p}" for f, _, p in CASES])
def test_a_poisoned_field_is_refused_in_one_line(space, tmp_path, field, accepts, poison):
    path = tmp_path / "fake-r8.yaml"
    data = _plain(space)
    _poison(data, field, POISONS[poison])
    path.write_text(yaml.safe_dump(data, sort_keys=True))
    if field.startswith("metadata.space_config") and poison in accepts:  # finite: the space refuses it when bound
        with pytest.raises(UserError, match="resolution"):
            LatencyTable.load(path, space)
        return
    if poison in accepts:
        LatencyTable.load(path)
        return
    if poison == "missing" and field == f"correction.entries.{KEY}":  # a key, not a field: the key sets differ
        with pytest.raises(UserError, match=f"{path}: correction keys differ .*{KEY}"):
            LatencyTable.load(path)
        return
    with pytest.raises(UserError) as err:
        LatencyTable.load(path)
    message = str(err.value)
    shown = "missing" if poison == "missing" else "nan" if poison == "nan" else repr(POISONS[poison])
    for needle in (str(path), _shown_path(field), f"is {shown}", "allowed:"):
        assert needle in message, (needle, message)
    assert "\n" not in message and len(message) < 400 + len(str(path)), message
    assert "re-profile" in message and "`nas profile" in message, message


def test_the_allowed_range_is_named(space, tmp_path):
    path = tmp_path / "fake-r8.yaml"
    data = _plain(space)
    for field, value, allowed in [
        ("metadata.protocol.network_reference.ms", 0, "a finite number in (0, 1e+06]"),
        ("metadata.batch", 0, "an integer in [1, 1000000]"),
        (f"entries.{KEY}.count", 2.5, "an integer in [1, 1000000000]"),
        ("metadata.rescaled.scale", -2.0, "a finite number in [0.001, 1000]"),
        ("correction.params.ridge", -1, "a number in [0, inf]"),
        ("correction.params.cv_mape", "x", "a finite number in [0, 1e+06] or null"),
    ]:
        poisoned = yaml.safe_load(yaml.safe_dump(data))
        _poison(poisoned, field, value)
        path.write_text(yaml.safe_dump(poisoned, sort_keys=True))
        with pytest.raises(UserError) as err:
            LatencyTable.load(path)
        assert f"{field} is {value!r}" in str(err.value) and f"allowed: {allowed};" in str(err.value), str(err.value)


def test_a_huge_value_or_key_is_cut_short(space, tmp_path):
    path = tmp_path / "fake-r8.yaml"
    data = _plain(space)
    data["entries"][KEY]["mean"] = "9" * 1_000_000
    path.write_text(yaml.safe_dump(data, sort_keys=True))
    with pytest.raises(UserError, match=r"\(1000000 chars\)") as err:
        LatencyTable.load(path)
    assert len(str(err.value)) < 600 and "(a str, not a number)" in str(err.value)
    data = _plain(space)
    data["entries"]["k" * 100_000] = {"mean": -1.0, "std": 0.0, "count": 1}
    path.write_text(yaml.safe_dump(data, sort_keys=True))
    with pytest.raises(UserError, match=r"entries\.'kkk.*\(100000 chars\)\.mean is -1\.0") as err:
        LatencyTable.load(path)
    assert len(str(err.value)) < 600


def test_a_table_built_in_memory_is_refused_alike(space):
    table = full_table(space)
    bad = table.data.entries[KEY].model_copy(update={"mean": -1.0})
    with pytest.raises(UserError, match=rf"<memory>: entries\.{KEY}\.mean is -1\.0; allowed"):
        table.replace(entries={**table.entries, KEY: bad})
    with pytest.raises(UserError, match=r"rescaled\.scale is 5000\.0"):  # a rescale out of range
        scaled(table, 2.0, table.metadata.rescaled.model_copy(update={"scale": 5000.0}))
    with pytest.raises(UserError, match=r"is [0-9.]+e\+307; allowed: a finite number in"):  # sums would overflow
        scaled(table, 1.5e308, table.metadata.rescaled)


def test_every_numeric_field_of_the_schema_has_a_rule():
    """A numeric field added to the models without a range in `RULES` fails here."""
    missing = [path for path in _numeric_fields(TableFile) if _rule_at(path) is None]
    assert not missing, f"numeric fields without a rule in RULES: {missing}"
    entry = _rule_at("entries.*.mean")
    assert isinstance(entry, Range) and entry.required and entry.high == MAX_MS


def test_find_bad_number_walks_nested_rules():
    assert find_bad_number({"a": [1.0, math.inf]}, {}).path == "a[1]"  # no rule: still finite
    assert find_bad_number({"a": [1, 2]}, {"a": Each(Range(0, 1))}).path == "a[1]"
    assert find_bad_number({"a": {}}, {"a": {"b": Range(0, 1)}}).missing
    assert find_bad_number({"a": {}}, {"a": {"b": Range(0, 1).optional}}) is None
    assert find_bad_number({"a": True}, {"a": Range(0, 1)}).describe() == (
        "a is True (a bool, not a number); allowed: a finite number in [0, 1]")
    assert find_bad_number({"a": 10**400}, {"a": Range(0, 1e6)}).value == 10**400  # exact, no float overflow
    assert find_bad_number({"a": None}, {"a": Range(0, 1)}).describe() == (
        "a is null; allowed: a finite number in [0, 1]")
    assert find_bad_number({"a": None}, {"a": Range(0, 1).or_null}) is None


def _numeric_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Key paths of the float and int fields of `model` and the models inside it (`*` for dict values)."""
    paths = []
    for name, field in model.model_fields.items():
        paths += _numeric_paths(field.annotation, f"{prefix}{name}")
    return paths


def _numeric_paths(annotation, path: str) -> list[str]:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if annotation in (int, float):
        return [path]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _numeric_fields(annotation, f"{path}.")
    if origin in (typing.Union, types.UnionType):
        return [p for a in args for p in _numeric_paths(a, path)]
    if origin is dict:
        return _numeric_paths(args[1], f"{path}.*")
    if origin is list:
        return _numeric_paths(args[0], f"{path}.#")
    if origin is tuple:
        return [p for i, a in enumerate(args) for p in _numeric_paths(a, f"{path}.{i}")]
    return []


def _rule_at(path: str):
    rule = RULES
    for part in path.split("."):
        if part == "#" and isinstance(rule, Each):
            rule = rule.rule
        elif part.isdigit() and isinstance(rule, tuple):
            rule = rule[int(part)]
        elif isinstance(rule, dict) and (part in rule or "*" in rule):
            rule = rule.get(part, rule.get("*"))
        else:
            return None
    return rule if isinstance(rule, Range) else None

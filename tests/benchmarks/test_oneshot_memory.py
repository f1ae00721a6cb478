"""Pure helpers of the memory section of benchmarks/oneshot.py (`_oneshot_memory`; no measurement runs here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from _oneshot_memory import allocation_peak, largest_choices, parse_status, ratio, summarize  # noqa: E402

STATUS = """Name:\tpython
VmPeak:\t 1234568 kB
VmHWM:\t  600000 kB
VmRSS:\t  450000 kB
Threads:\t1
SigQ:\t0/95000
"""


def test_parse_status_reads_kb_fields_as_bytes_and_skips_others() -> None:
    got = parse_status(STATUS)
    assert got == {"VmPeak": 1234568 * 1024, "VmHWM": 600000 * 1024, "VmRSS": 450000 * 1024}


def test_parse_status_of_this_process_has_rss_below_peak() -> None:
    got = parse_status(Path("/proc/self/status").read_text())
    assert 0 < got["VmRSS"] <= got["VmHWM"]


def test_largest_choices_takes_the_most_macs_and_never_the_zero_op() -> None:
    costs = {"s1.b1.op": {"mb3_k3": 10, "mb6_k7": 90, "mb6_k5": 60, "zero": None},
             "s1.b2.op": {"mb3_k3": 5, "mb6_k3": 7}}
    assert largest_choices(costs) == {"s1.b1.op": "mb6_k7", "s1.b2.op": "mb6_k3"}


def test_largest_choices_breaks_ties_by_order_and_refuses_an_all_zero_decision() -> None:
    assert largest_choices({"d": {"a": 3, "b": 3}}) == {"d": "a"}
    with pytest.raises(ValueError, match="d: every choice is the zero op"):
        largest_choices({"d": {"zero": None}})


def test_allocation_peak_counts_only_the_window_above_its_start() -> None:
    # (time, size, running total): 100 live before the window; in it +50, +30 (peak 180), -80; after it +1000.
    allocs = [(1, 100, 100), (10, 50, 150), (11, 30, 180), (12, -80, 100), (20, 1000, 1100)]
    assert allocation_peak(allocs, 5, 15) == 80
    assert allocation_peak(list(reversed(allocs)), 5, 15) == 80  # order of the events does not matter
    assert allocation_peak(allocs, 0, 100) == 1100  # from an empty start
    assert allocation_peak([(1, 100, 100), (10, -60, 40)], 5, 15) == 0  # only frees: no growth


def test_summarize_gives_medians_in_mib() -> None:
    runs = [{"step": 3 * 2**20}, {"step": 1 * 2**20}, {"step": 2 * 2**20 + 2**19}]
    assert summarize(runs, ["step"]) == {"step": {"median_mib": 2.5, "runs_mib": [3.0, 1.0, 2.5]}}
    assert ratio(130.0, 100.0) == 1.3

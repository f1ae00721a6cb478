"""Resuming a search in its run dir: the same search, priced with the same latency table.

A run dir's `config.yaml` records the latency table its archs were priced with (path, sha256).
The table found for the same flags may since have changed: `nas profile --validate` and
`--rescale` write a newer table to the user profiles dir, which is looked in first. Mixing two
tables in one search would rank archs priced differently, so while the recorded file is
unchanged the search goes on with it, and says so; a changed or deleted file, or another table
asked for with `--hardware`, is refused in one line that says what to do.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

from nas.errors import UserError
from nas.plan import SearchPlan, plan_search
from nas.run_dir import RunDir

__all__ = ["plan_for_run_dir"]


def plan_for_run_dir(rd: RunDir, plan: SearchPlan, notify: Callable[[str], None] | None = None) -> SearchPlan:
    """`plan`, or the same plan with the latency table `rd` was priced with; refuses a run dir of another search.

    Raises:
        UserError: `rd` holds another search, or its table changed, is gone, or `--hardware` names another.
    """
    given = plan.stored_config()
    rd.check_config(given, ignore=("hardware", "latency_table"))
    stored_config = rd.read_config() or {}
    stored, table = stored_config.get("latency_table"), given["latency_table"]
    if not stored or not table or stored.get("sha256") == table["sha256"]:
        return plan
    path = Path(str(stored.get("path")))
    if given.get("hardware") != stored_config.get("hardware"):  # the user asks for another table
        was = stored_config.get("hardware")
        fix = f"re-run with --hardware {_tail(str(was), 50)}" if was else "re-run without --hardware"
        raise UserError(f"--hardware {_tail(str(given.get('hardware')), 50)}: not the latency table this run dir "
                        f"was priced with; {fix}, or choose another --run-dir")
    try:
        intact = path.is_file() and _sha256(path) == stored.get("sha256")  # is_file: no FIFO to hang on
    except OSError:
        intact = False
    if not intact:
        state = "has changed" if path.exists() else "is gone"
        raise UserError(f"latency table {_tail(str(path))} that this run dir was priced with {state}; restore it "
                        "or choose another --run-dir")
    replanned = plan_search(plan.config.model_copy(update={"hardware": str(path)}), plan.evaluator_cls)
    if notify is not None:
        notify(f"resuming with the run dir's latency table {path}; a newer one is at {table['path']} "
               "(a new --run-dir uses it)")
    return dataclasses.replace(replanned, config=plan.config)  # config.yaml keeps the flags as given


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tail(text: str, limit: int = 70) -> str:
    """`text` cut to its last `limit` characters: a path's file name says the most."""
    return text if len(text) <= limit else "..." + text[-(limit - 3):]

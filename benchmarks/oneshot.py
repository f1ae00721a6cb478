"""One-shot methods on a proxy (issue 13): latency targets, ranking, memory and scaling.

Run: .venv/bin/python benchmarks/oneshot.py [--sections latency,ranking,memory,scaling] [--quick]
Each section lives in its own module (`_oneshot_<section>.py`, a `run(quick: bool) -> dict`). The
sections run are merged into `benchmarks/oneshot.json`; sections not run keep their committed
figures, so one section can be re-measured alone (the scaling one on a quiet machine).
`--quick` runs each section at a smoke-test size (the test suite uses it); its figures are not
the committed ones and it writes nothing unless `--out` is given.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, machine  # noqa: E402

SECTIONS = ("latency", "ranking", "memory", "scaling")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, from {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes; writes only with --out")
    parser.add_argument("--out", type=Path, default=None, help="the JSON to write (default benchmarks/oneshot.json)")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        parser.error(f"--sections {args.sections!r}: allowed values are {', '.join(SECTIONS)}")
    out = args.out if args.out is not None else (None if args.quick else HERE / "oneshot.json")
    result: dict = {}
    for section in sections:
        start = time.perf_counter()
        figures = importlib.import_module(f"_oneshot_{section}").run(quick=args.quick)
        result[section] = {**figures, "seconds": round(time.perf_counter() - start, 1),
                           "machine": machine(), "quick": args.quick}
        print(f"[oneshot] {section}: {json.dumps(result[section], sort_keys=True)[:400]}", flush=True)
    if out is not None:  # read just before writing: another run may have written its sections meanwhile
        kept = json.loads(out.read_text()) if out.exists() else {}
        merged = {**{k: v for k, v in kept.items() if k in SECTIONS}, **result}
        tmp = out.with_suffix(f".json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")
        tmp.replace(out)
        print(f"[oneshot] wrote {out}")
    return result


if __name__ == "__main__":
    main()

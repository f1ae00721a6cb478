"""Helpers shared by the benchmark scripts: machine facts and writing the JSON result."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import ray
    import torch

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "ray": ray.__version__,
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds")}


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Write `benchmarks/<name>.json` (sorted keys) and print it."""
    path = HERE / f"{name}.json"
    text = json.dumps({**result, "machine": machine()}, indent=1, sort_keys=True)
    path.write_text(text + "\n")
    print(text)
    return path

"""`benchmarks/lut_accuracy.py` writes where `--out` says, never over the tracked results by default."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from nas.config import PROFILES_DIR, ROOT

SCRIPT = ROOT / "benchmarks" / "lut_accuracy.py"
TRACKED = ROOT / "benchmarks" / "lut_accuracy.json"


def test_results_go_to_out_and_name_missed_criteria(tmp_path):
    profiles = tmp_path / "profiles" / "amd-epyc-onnxruntime-t1-fp32-b1"
    profiles.mkdir(parents=True)
    shutil.copy(PROFILES_DIR / "amd-epyc-onnxruntime-t1-fp32-b1" / "proxylessnas-r32.yaml", profiles)
    before = TRACKED.read_bytes()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--profiles", str(tmp_path / "profiles"), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "lut_accuracy.json").read_text())
    (table,) = summary["tables"]
    assert table["missed"] == [] and table["final"]["within_10"] >= 0.95
    assert Path(table["table"]).name == "proxylessnas-r32.yaml"
    assert {p.suffix for p in (tmp_path / "out" / "lut_accuracy").iterdir()} == {".json", ".png"}
    assert TRACKED.read_bytes() == before

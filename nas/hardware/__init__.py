"""Hardware layer: timers per backend, measured latency tables, profiling and validation.

Importing this package registers the timers (`cpu`, `cuda`, `onnxruntime`) in `TIMERS`.
The module `profile` keeps its name (its main function is `nas.hardware.profile.profile`).
"""

from nas.hardware import profile, table, timers
from nas.hardware.profile import fit_none, fit_ridge, validate
from nas.hardware.table import LatencyTable, profile_command, resolve_table, table_path
from nas.hardware.timers import CpuTimer, CudaTimer, OnnxRuntimeTimer, Timer, Timing

__all__ = [
    "CpuTimer",
    "CudaTimer",
    "LatencyTable",
    "OnnxRuntimeTimer",
    "Timer",
    "Timing",
    "fit_none",
    "fit_ridge",
    "profile",
    "profile_command",
    "resolve_table",
    "table",
    "table_path",
    "timers",
    "validate",
]

"""Hardware layer: timers per backend, measured latency tables, where they live, profiling, fitting, rescaling.

Importing this package registers the timers (`cpu`, `cuda`, `onnxruntime`, `onnxruntime_cuda`)
in `TIMERS`. The module `profile` keeps its name (its main function is `nas.hardware.profile.profile`).
"""

from nas.hardware import fit, onnx_timers, profile, protocol, rescale, schema, store, table, timers
from nas.hardware.fit import fit_none, fit_positive, fit_ridge
from nas.hardware.onnx_timers import OnnxRuntimeTimer
from nas.hardware.profile import missed_criteria, refit, validate
from nas.hardware.rescale import host_scale, scale_warning
from nas.hardware.store import (
    profile_command,
    resolve_table,
    table_identity,
    table_path,
    table_scale,
    user_profiles_dir,
)
from nas.hardware.table import LatencyTable
from nas.hardware.timers import CpuTimer, CudaTimer, Timer, Timing

__all__ = [
    "CpuTimer",
    "CudaTimer",
    "LatencyTable",
    "OnnxRuntimeTimer",
    "Timer",
    "Timing",
    "fit",
    "fit_none",
    "fit_positive",
    "fit_ridge",
    "host_scale",
    "missed_criteria",
    "profile",
    "profile_command",
    "protocol",
    "refit",
    "rescale",
    "resolve_table",
    "scale_warning",
    "schema",
    "onnx_timers",
    "store",
    "table",
    "table_identity",
    "table_path",
    "table_scale",
    "timers",
    "user_profiles_dir",
    "validate",
]

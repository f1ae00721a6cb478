"""One-shot (weight-sharing) NAS methods; importing this package registers every one.

A method is one module plus one YAML file with the same stem (`nas/oneshot/spos.py` and
`methods/spos.yaml`): the YAML files are the list of methods, and this package imports the
module each one names, explicitly by name, never by scanning the package.
"""

import importlib

from nas.oneshot.base import (
    METHODS_DIR,
    Batch,
    MethodConfig,
    MethodModel,
    OneShotMethod,
    build_method,
    method_defaults,
    parse_method_config,
)

for _yaml in sorted(METHODS_DIR.glob("*.yaml")):
    importlib.import_module(f"nas.oneshot.{_yaml.stem}")

__all__ = ["METHODS_DIR", "Batch", "MethodConfig", "MethodModel", "OneShotMethod", "build_method",
           "method_defaults", "parse_method_config"]

"""One-shot (weight-sharing) NAS methods.

A method is one module plus one YAML file with the same stem (`nas/oneshot/spos.py` and
`methods/spos.yaml`): the YAML files are the list of methods, and `nas.registry.METHODS` imports
the module a name's file names when that name is looked up (every one when the names are listed).
"""

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

__all__ = ["METHODS_DIR", "Batch", "MethodConfig", "MethodModel", "OneShotMethod", "build_method",
           "method_defaults", "parse_method_config"]

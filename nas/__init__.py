"""nas: hardware-aware neural architecture search on Ray with measured latency lookup tables.

Importing this package is cheap: torch and ray load only when a space, evaluator or
search is used, so `nas --help` stays fast.
"""

__version__ = "0.1.0"

"""Evaluators, data sets, short training and cost metrics; importing registers every evaluator."""

from nas.evaluate import evaluators, function, supernet, tabular
from nas.evaluate.base import Evaluator, EvaluatorConfig, EvaluatorSpec, build_evaluator, evaluator_class

__all__ = [
    "Evaluator", "EvaluatorConfig", "EvaluatorSpec", "build_evaluator", "evaluator_class", "evaluators", "function",
    "supernet", "tabular",
]

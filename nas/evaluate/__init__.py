"""Evaluators, data sets, short training and cost metrics; importing registers every evaluator."""

from nas.evaluate import evaluators, tabular
from nas.evaluate.base import Evaluator, EvaluatorConfig, EvaluatorSpec, build_evaluator, evaluator_class

__all__ = [
    "Evaluator", "EvaluatorConfig", "EvaluatorSpec", "build_evaluator", "evaluator_class", "evaluators", "tabular",
]

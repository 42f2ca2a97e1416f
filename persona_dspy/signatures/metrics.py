"""Task metrics: ROUGE-L for free text, and the guard around a user's own metric callable.

A metric follows DSPy's convention, ``metric(example, prediction) -> float`` in [0, 1]; a custom one
that raises or returns anything but a finite number is a ``TaskMetricError``, never a silent 0.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable
from typing import Any

import dspy
import numpy as np

from persona_dspy.errors import TaskMetricError

Metric = Callable[..., Any]
"""``metric(example: dspy.Example, prediction: dspy.Prediction) -> float`` (a bool counts as 0 / 1)."""

_WORD = re.compile(r"\w+")


def rouge_l(predicted: str, reference: str) -> float:
    """ROUGE-L F1 (Lin, 2004) over lowercased word tokens: the longest common subsequence's precision
    and recall, harmonic mean. 1.0 for identical texts, 0.0 when no word is shared in order."""
    p, r = _WORD.findall(predicted.lower()), _WORD.findall(reference.lower())
    if not p or not r:
        return float(p == r)
    row = [0] * (len(r) + 1)  # one row of the LCS table: O(len(r)) memory
    for word in p:
        diagonal = 0
        for j, ref_word in enumerate(r, 1):
            diagonal, row[j] = row[j], diagonal + 1 if word == ref_word else max(row[j], row[j - 1])
    lcs = row[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def call_metric(metric: Metric, task_name: str, example: dspy.Example, prediction: dspy.Prediction) -> float:
    """``metric(example, prediction)`` as a float; a raise, a non-number or a number outside [0, 1] is a
    ``TaskMetricError`` (a bool counts as 0 or 1, as DSPy's own metrics return)."""
    where = f"the metric of task {task_name!r} ({getattr(metric, '__name__', type(metric).__name__)})"
    try:
        value = metric(example, prediction)
    except Exception as exc:
        raise TaskMetricError(
            f"{where} raised {type(exc).__name__}: {str(exc)[:200]}. Fix it so that metric(example, prediction) "
            "returns a number in [0, 1] for any answer (prediction fields may be empty strings)."
        ) from exc
    if isinstance(value, np.bool_):  # numpy's bool is no numbers.Real
        value = bool(value)
    if not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise TaskMetricError(
            f"{where} returned {value!r} ({type(value).__name__}), not a finite number. "
            "Return a float in [0, 1] (1 = the user's real answer)."
        )
    if not -1e-6 <= float(value) <= 1 + 1e-6:  # the gate averages scores: one of 5.0 would outweigh the rest
        raise TaskMetricError(
            f"{where} returned {value!r}, outside [0, 1]. Scale it to [0, 1] (1 = the user's real answer); "
            "a bool is fine."
        )
    return min(1.0, max(0.0, float(value)))  # a rounding error's 1.0000001 counts as 1


__all__ = ["Metric", "call_metric", "rouge_l"]

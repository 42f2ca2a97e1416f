"""Bootstrap intervals for the quality benchmark: one metric's 95% interval, and paired differences.

Cases (users) are the unit of resampling. A paired difference resamples the *same* cases for both
methods, so what two methods have in common (an easy or a hard user) cancels out of the interval.
Everything is vectorized over the resamples with numpy: 10,000 resamples of a few hundred cases take
milliseconds.

    point, lo, hi = bootstrap_ci(abs_errors)                               # MAE with its 95% interval
    diff, lo, hi = paired_bootstrap_diff(errors_align, errors_icl)         # < 0: align has the lower MAE
    diff, lo, hi = paired_metric_diff("macro_f1", gold, pred_a, pred_b, labels=LAMP2N_LABELS)

Intervals are percentile intervals over ``n`` resamples drawn with ``numpy.random.default_rng(seed)``,
so a call with the same inputs and seed returns the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence

import numpy as np

METRICS = ("mae", "rmse", "accuracy", "macro_f1")
_CHUNK_ELEMENTS = 2_000_000  # resampled indices held in memory at once

Interval = tuple[float, float, float]
# A statistic over the last axis, numpy style: ``stat(x, axis=-1)`` (np.mean, np.median, ...).
Stat = Callable[..., np.ndarray]


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, n: int = 10_000, seed: int = 0, stat: Stat = np.mean, level: float = 0.95
) -> Interval:
    """``(stat(values), lo, hi)``: the statistic and its percentile bootstrap interval at ``level``."""
    x = _as_cases(values)
    samples = np.concatenate([stat(x[idx], axis=-1) for idx in _resamples(len(x), n, seed)])
    return (float(stat(x, axis=-1)), *_percentiles(samples, level))


def paired_bootstrap_diff(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n: int = 10_000,
    seed: int = 0,
    stat: Stat = np.mean,
    level: float = 0.95,
) -> Interval:
    """``(stat(a) - stat(b), lo, hi)`` where case ``i`` of ``a`` and of ``b`` is the same user.

    Each resample draws one set of case indices and applies it to both arrays.
    """
    x, y = _as_cases(a), _as_cases(b)
    _same_length(x, y)
    samples = np.concatenate([stat(x[idx], axis=-1) - stat(y[idx], axis=-1) for idx in _resamples(len(x), n, seed)])
    return (float(stat(x, axis=-1) - stat(y, axis=-1)), *_percentiles(samples, level))


def metric_ci(
    metric: str,
    gold: Sequence,
    pred: Sequence,
    *,
    labels: Sequence[Hashable] | None = None,
    scale: tuple[float, float] | None = None,
    n: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """A task metric over cases ``(gold[i], pred[i])`` with its bootstrap interval.

    ``mae``/``rmse``: numeric gold and predictions; an invalid prediction (``None`` or NaN) counts as the
    worst error on ``scale`` (required then), as ``persona_dspy.evaluation.metrics`` scores it.
    ``accuracy``: per-case 0/1. ``macro_f1``: F1 averaged over ``labels`` (required; a label never
    predicted nor true scores 0, as in LaMP), recomputed on each resample.
    """
    score = _Score(metric, gold, labels, scale)
    cases = score.cases(pred)
    samples = np.concatenate([score.rows(cases, idx) for idx in _resamples(len(score.gold), n, seed)])
    return (score.value(cases), *_percentiles(samples, level))


def paired_metric_diff(
    metric: str,
    gold: Sequence,
    pred_a: Sequence,
    pred_b: Sequence,
    *,
    labels: Sequence[Hashable] | None = None,
    scale: tuple[float, float] | None = None,
    n: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """``(metric(a) - metric(b), lo, hi)`` with both methods' answers on the same resampled cases.

    For MAE/RMSE a negative difference means ``a`` is better; for accuracy/macro-F1 a positive one.
    """
    score = _Score(metric, gold, labels, scale)
    ca, cb = score.cases(pred_a), score.cases(pred_b)
    samples = np.concatenate(
        [score.rows(ca, idx) - score.rows(cb, idx) for idx in _resamples(len(score.gold), n, seed)]
    )
    return (score.value(ca) - score.value(cb), *_percentiles(samples, level))


def macro_f1(gold: Sequence[Hashable], pred: Sequence[Hashable | None], labels: Sequence[Hashable]) -> float:
    """F1 averaged over ``labels``; a prediction outside ``labels`` (e.g. ``None``) is simply wrong."""
    score = _Score("macro_f1", gold, labels, None)
    return score.value(score.cases(pred))


# -- internals ------------------------------------------------------------------------------------
def _as_cases(values: Sequence[float] | np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"expected a non-empty 1-D sequence of per-case values, got shape {x.shape}")
    return x


def _same_length(x: np.ndarray, y: np.ndarray) -> None:
    if len(x) != len(y):
        raise ValueError(f"paired values need the same cases: {len(x)} vs {len(y)}")


def _resamples(m: int, n: int, seed: int) -> Iterator[np.ndarray]:
    """``n`` rows of ``m`` case indices drawn with replacement, in chunks that bound memory."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ELEMENTS // m)
    for start in range(0, n, rows):
        yield rng.integers(0, m, size=(min(rows, n - start), m))


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return float(lo), float(hi)


class _Score:
    """One metric: ``cases`` turns predictions into per-case arrays, ``value`` scores all cases and
    ``rows`` scores each row of resampled indices at once."""

    def __init__(
        self, metric: str, gold: Sequence, labels: Sequence[Hashable] | None, scale: tuple[float, float] | None
    ) -> None:
        self.metric, self.scale = metric, scale
        if metric == "macro_f1":
            if not labels:
                raise ValueError("macro_f1 needs the task's label set (labels=...)")
            self.index = {label: k for k, label in enumerate(labels)}
            self.k = len(self.index)
            self.gold = self._codes(gold)
        elif metric in ("mae", "rmse"):
            self.gold = _as_cases(gold)
        elif metric == "accuracy":
            self.gold = np.asarray(list(gold), dtype=object)
            if len(self.gold) == 0:
                raise ValueError("expected a non-empty sequence of cases")
        else:
            raise ValueError(f"unknown metric {metric!r}; one of {METRICS}")

    def _codes(self, answers: Sequence) -> np.ndarray:
        """Label -> 0..k-1; anything else (None, an unknown label) -> k, a bucket left out of the average."""
        return np.array([self.index.get(a, self.k) for a in answers], dtype=np.int64)

    def cases(self, pred: Sequence) -> np.ndarray:
        if len(pred) != len(self.gold):
            raise ValueError(f"{len(pred)} predictions for {len(self.gold)} cases")
        if self.metric == "macro_f1":
            return self._codes(pred)
        if self.metric == "accuracy":
            return np.array([p is not None and g == p for g, p in zip(self.gold, pred)], dtype=float)
        p = np.array([np.nan if v is None else v for v in pred], dtype=float)
        errors = np.abs(p - self.gold)
        invalid = np.isnan(p)
        if invalid.any():
            if self.scale is None:
                raise ValueError(f"{int(invalid.sum())} invalid predictions: pass scale=(lo, hi) to score them")
            lo, hi = self.scale
            errors[invalid] = np.maximum(np.abs(self.gold - lo), np.abs(hi - self.gold))[invalid]
        return errors

    def value(self, cases: np.ndarray) -> float:
        return float(self.rows(cases, np.arange(len(cases))[None, :])[0])

    def rows(self, cases: np.ndarray, idx: np.ndarray) -> np.ndarray:
        if self.metric == "mae":
            return cases[idx].mean(axis=1)
        if self.metric == "rmse":
            return np.sqrt((cases[idx] ** 2).mean(axis=1))
        if self.metric == "accuracy":
            return cases[idx].mean(axis=1)
        return self._macro_f1_rows(self.gold[idx], cases[idx])

    def _macro_f1_rows(self, gold: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """Per row: mean over the k labels of 2TP / (2TP + FP + FN) = 2TP / (#true + #predicted), 0 if TP = 0."""
        rows, width = gold.shape[0], self.k + 1
        offset = np.arange(rows)[:, None] * width

        def counts(codes: np.ndarray) -> np.ndarray:
            return np.bincount(codes.ravel(), minlength=rows * width).reshape(rows, width)[:, : self.k]

        true, predicted = counts(gold + offset), counts(pred + offset)
        tp = counts(np.where(gold == pred, gold + offset, offset + self.k))
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(tp > 0, 2 * tp / (true + predicted), 0.0)
        return f1.mean(axis=1)

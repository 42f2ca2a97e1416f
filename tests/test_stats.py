"""Bootstrap intervals of the quality benchmark (benchmarks/stats.py) against cases with a known answer."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from stats import bootstrap_ci, macro_f1, metric_ci, paired_bootstrap_diff, paired_metric_diff

from persona_dspy.evaluation import metrics
from persona_dspy.signatures import TASKS

LABELS = TASKS["LaMP-2N"].labels


def test_point_is_the_statistic_and_lies_inside_its_interval():
    x = np.random.default_rng(3).exponential(size=80)
    point, lo, hi = bootstrap_ci(x)
    assert point == pytest.approx(x.mean())
    assert lo < point < hi
    assert bootstrap_ci(x, stat=np.median)[0] == pytest.approx(np.median(x))


def test_same_seed_same_interval_other_seed_other_interval():
    x = np.random.default_rng(4).normal(size=50)
    assert bootstrap_ci(x, n=2000, seed=7) == bootstrap_ci(x, n=2000, seed=7)
    assert bootstrap_ci(x, n=2000, seed=7) != bootstrap_ci(x, n=2000, seed=8)


def test_constant_values_give_a_zero_width_interval():
    assert bootstrap_ci([0.5] * 30) == (0.5, 0.5, 0.5)


def test_width_matches_the_normal_theory_interval_on_a_large_sample():
    x = np.random.default_rng(5).normal(size=400)
    _, lo, hi = bootstrap_ci(x)
    assert hi - lo == pytest.approx(2 * 1.96 * x.std() / np.sqrt(len(x)), rel=0.08)


def test_coverage_of_the_true_mean_is_near_the_nominal_level():
    rng = np.random.default_rng(6)
    hits = 0
    for i in range(300):
        _, lo, hi = bootstrap_ci(rng.normal(loc=2.0, size=40), n=1000, seed=i)
        hits += lo <= 2.0 <= hi
    assert 0.88 <= hits / 300 <= 0.99  # percentile intervals undercover a little at n = 40


def test_identical_methods_differ_by_exactly_zero():
    x = np.random.default_rng(8).normal(size=60)
    assert paired_bootstrap_diff(x, x.copy()) == (0.0, 0.0, 0.0)


def test_a_constant_paired_difference_has_a_zero_width_interval():
    x = np.random.default_rng(9).uniform(0, 4, size=60)  # very different users ...
    diff, lo, hi = paired_bootstrap_diff(x - 0.25, x)  # ... but a is always 0.25 lower
    assert (diff, lo, hi) == pytest.approx((-0.25, -0.25, -0.25))


def test_pairing_resamples_the_same_users_for_both_methods():
    rng = np.random.default_rng(10)
    users = rng.uniform(0, 4, size=100)
    a, b = users + rng.normal(0, 0.05, 100) - 0.1, users
    _, lo, hi = paired_bootstrap_diff(a, b)
    _, lo_a, hi_a = bootstrap_ci(a)
    assert hi < 0  # the small, consistent gain is seen ...
    assert hi - lo < (hi_a - lo_a) / 5  # ... because the users' spread cancels out


def test_paired_inputs_must_describe_the_same_cases():
    with pytest.raises(ValueError, match="same cases"):
        paired_bootstrap_diff([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])


def test_mae_and_rmse_score_invalid_answers_as_the_worst_error_like_the_evaluation():
    gold, pred = [4.0, 1.0, 3.5, 0.5], [3.5, None, 3.5, 2.0]
    task = TASKS["movielens_rating"]
    expected = metrics(task, [str(g) for g in gold], [None if p is None else str(p) for p in pred])
    assert metric_ci("mae", gold, pred, scale=task.scale)[0] == pytest.approx(expected["mae"])
    assert metric_ci("rmse", gold, pred, scale=task.scale)[0] == pytest.approx(expected["rmse"])
    with pytest.raises(ValueError, match="scale"):
        metric_ci("mae", gold, pred)


def test_accuracy_is_the_mean_of_per_case_hits():
    gold = ["sports", "food & drink", "travel", "women"]
    point, lo, hi = metric_ci("accuracy", gold, ["sports", "food & drink", None, "crime"])
    assert point == 0.5 and 0 <= lo <= point <= hi <= 1
    assert metric_ci("accuracy", gold, gold) == (1.0, 1.0, 1.0)


def test_macro_f1_averages_over_the_whole_label_set_like_the_evaluation():
    rng = np.random.default_rng(11)
    gold = list(rng.choice(LABELS[:6], size=40))
    pred = [g if rng.random() < 0.6 else rng.choice(LABELS) for g in gold]
    pred[0], pred[1] = None, "not a label"
    expected = metrics(TASKS["LaMP-2N"], gold, pred)["macro_f1"]
    assert macro_f1(gold, pred, LABELS) == pytest.approx(expected)
    assert metric_ci("macro_f1", gold, pred, labels=LABELS)[0] == pytest.approx(expected)


def test_macro_f1_is_recomputed_on_each_resample():
    gold = ["sports"] * 10 + ["travel"] * 10
    pred = ["sports"] * 10 + ["sports"] * 5 + ["travel"] * 5
    point, lo, hi = metric_ci("macro_f1", gold, pred, labels=["sports", "travel"], n=4000)
    assert point == pytest.approx((2 * 10 / 25 + 2 * 5 / 15) / 2)
    assert lo < point < hi  # a per-case average could not move: F1 has no per-case value


def test_paired_metric_difference_of_a_method_with_itself_is_zero():
    gold = ["sports", "travel", "women", "sports"] * 5
    pred = ["sports", "sports", "women", "travel"] * 5
    assert paired_metric_diff("macro_f1", gold, pred, list(pred), labels=LABELS) == (0.0, 0.0, 0.0)
    assert paired_metric_diff("accuracy", gold, pred, list(pred)) == (0.0, 0.0, 0.0)


def test_paired_mae_difference_sees_a_consistent_gain():
    rng = np.random.default_rng(12)
    gold = rng.choice(np.arange(1, 11) / 2, size=120)
    worse = np.clip(gold + rng.choice([-1.5, 1.5], size=120), 0.5, 5)
    better = np.clip(gold + (worse - gold) * 0.5, 0.5, 5)
    diff, lo, hi = paired_metric_diff("mae", gold, better, worse)
    assert diff == pytest.approx(np.abs(better - gold).mean() - np.abs(worse - gold).mean())
    assert lo <= diff <= hi < 0


def test_unknown_metric_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="macro_f1"):
        metric_ci("f1", ["a"], ["a"])

"""The no-LM predictors of ``benchmarks/ceiling.py``: the item predictor reads nothing at or after the case's time
and none of the user's own ratings; the floor of a constant per user is computed as its docstring says."""

from __future__ import annotations

import csv
import gzip
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ceiling


def _write(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with gzip.open(path, "wt", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def test_the_item_predictor_uses_only_other_users_ratings_from_before_the_case(tmp_path, monkeypatch):
    _write(
        tmp_path / "movies.csv.gz", ["movieId", "title", "genres"], [[1, "A (1999)", "Drama"], [2, "Q (2000)", "Drama"]]
    )
    _write(
        tmp_path / "ratings.csv.gz",
        ["userId", "movieId", "rating", "timestamp"],
        [
            [2, 1, 3.0, 5],  # A by another user before the user rated it: counts
            [2, 1, 5.0, 20],  # A after the user rated it: not
            [2, 2, 2.0, 50],  # Q by another user before the case: counts
            [3, 2, 5.0, 100],  # Q at the case's time: not
            [3, 2, 5.0, 150],  # Q after it: not
            [1, 2, 0.5, 60],  # Q by the user themself: not
        ],
    )
    monkeypatch.setattr(ceiling, "RAW", tmp_path)
    row = {
        "user_id": "1",
        "input": "What rating? movie: Q (2000) genres: Drama",
        "output": "3.0",
        "timestamp": 100,
        "profile": [{"movie": "A (1999)", "genres": "Drama", "rating": 4.0, "timestamp": 10}],
    }
    # Q's mean 2.0 + the user's offset on A (4.0 - 3.0): 3.0, the answer; any leak moves it
    assert ceiling.item_offset_errors([row], 0.5, 5.0, 0.5, shrink=0).tolist() == [0.0]
    # shrunk by 2 pseudo-ratings of 3.5: A 3.33 (offset 0.67), Q 3.0 -> 3.67, rounded to 3.5
    assert ceiling.item_offset_errors([row], 0.5, 5.0, 0.5, shrink=2).tolist() == [0.5]


def test_the_item_predictor_needs_the_raw_files(tmp_path, monkeypatch):
    monkeypatch.setattr(ceiling, "RAW", tmp_path / "absent")
    assert ceiling.item_offset_errors([], 0.5, 5.0, 0.5) is None


def test_the_floor_of_a_constant_per_user():
    past = [{"rating": r, "timestamp": t} for t, r in enumerate([1.0, 2.0, 3.0, 4.0, 5.0])]
    rows = [{"profile": past, "output": "5.0"}, {"profile": past[:1], "output": "1.0"}]  # one rating: left out
    best, loo, fitted, users = ceiling.spread(rows, 0.5, 5.0, 0.5)
    assert users == 1
    assert best == pytest.approx(1.2)  # |x - 3| over 1..5
    assert loo == pytest.approx(1.6)  # medians of the other four: 3.5, 3.5, 3, 2.5, 2.5
    assert fitted == pytest.approx(1.5)  # the median of 1..5 and the answer 5 is 3.5

"""Task contracts: answers are validated against the label set / rating scale and scored in [0, 1]."""

import pytest

from persona_dspy.signatures import DEFAULT_PERSONA, TASKS


@pytest.mark.parametrize(
    "raw, parsed",
    [
        ("food & drink", "food & drink"),
        ("Food & Drink.", "food & drink"),
        ("I'd say politics", "politics"),
        ("culture & arts or politics", None),
        ("cooking", None),
        ("Category: healthy living.", "healthy living"),
        ("sportsmanship", None),  # a label inside a longer word is not that label
        ("crimes", "crime"),  # a plural is
        ("businesses", "business"),
        ("", None),
    ],
)
def test_lamp2n_labels_are_validated(raw, parsed):
    assert TASKS["LaMP-2N"].parse(raw) == parsed


@pytest.mark.parametrize(
    "raw, parsed",
    [
        ("4", "4.0"),
        ("3.7 stars", "3.5"),
        ("9", "5.0"),
        ("zero", None),
        ("On a scale of 1 to 5, I'd say 4", "4.0"),  # the scale's numbers are not the rating
        ("4/5", "4.0"),
        ("2.5 out of 5", "2.5"),
        ("On a scale from 0.5-5: 3", "3.0"),
        ("On a scale from 1 to 5 where 5 is best: 4", "4.0"),
        ("1-5 scale: 4", "4.0"),
        ("On a 5-point scale, 2", "2.0"),
        ("Rating (from 1 to 5): 3.5", "3.5"),
        ("Rating (1-5): 4", "4.0"),
        ("On a 1\u20135 scale, 3", "3.0"),
        ("On a scale where 1 is awful and 5 is great, 4", "4.0"),
        ("where 1 is the lowest and 5 the highest: 4", "4.0"),
        ("4, where 1 means awful", "4.0"),
        # a range that does not span the scale is the answer, not the scale: its first number
        ("between 3 and 4", "3.0"),
        ("Between 3 and 4 stars (based on 12 similar movies)", "3.0"),
        ("From 3 to 4 - the user rated 7 comedies", "3.0"),
        ("A film where 4 is fair given its 1995 release", "4.0"),
    ],
)
def test_movielens_ratings_are_parsed_and_clipped(raw, parsed):
    assert TASKS["movielens_rating"].parse(raw) == parsed


def test_scores():
    rating = TASKS["movielens_rating"]
    assert rating.score("5.0", "5.0") == 1.0
    assert rating.score("0.5", "5.0") == 0.0
    assert rating.score("nonsense", "5.0") == 0.0  # invalid answers score as the worst
    assert TASKS["LaMP-1"].score("[2]", "[2]") == 1.0 and TASKS["LaMP-1"].score("[1]", "[2]") == 0.0


def test_task_instructions_are_the_shared_default_persona_only():
    # the persona is the signature's instructions; task specifics live in the fields
    for task in TASKS.values():
        assert task.signature.instructions == DEFAULT_PERSONA

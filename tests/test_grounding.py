"""The facts a persona may state: measured from past answers, and checked against every rewrite."""

from __future__ import annotations

from persona_dspy.data import Interaction
from persona_dspy.optimizers.grounding import (
    RECENT_N,
    anchor_value,
    contradictions,
    facets,
    measure,
    with_anchor,
    with_label_anchor,
)
from persona_dspy.optimizers.textgrad_ops import MIN_SHIFT, step_size
from persona_dspy.signatures import TASKS

MOVIES = TASKS["movielens_rating"]


def rated(pairs: list[tuple[str, str]]) -> list[Interaction]:
    return [
        Interaction(
            user_id="u",
            id=f"m{i}",
            input=f"movie: Film {i} (2001) genres: {genres}",
            output=rating,
            timestamp=float(i),
            task="movielens_rating",
        )
        for i, (genres, rating) in enumerate(pairs)
    ]


def test_facets_are_the_genres_of_a_movie_and_nothing_else():
    assert facets("movie: Heat (1995) genres: Action, Crime, Thriller") == ["Action", "Crime", "Thriller"]
    assert facets("review summary: great strings") == []


def test_measured_mean_range_and_genre_shifts():
    facts = measure(MOVIES, rated([("Comedy", "5.0")] * 4 + [("Horror", "1.0")] * 4 + [("Drama", "3.0")] * 4))
    assert facts.n == 12 and facts.mean == 3.0 and (facts.low, facts.high) == (1.0, 5.0)
    assert [f.name for f in facts.higher] == ["Comedy"] and [f.name for f in facts.lower] == ["Horror"]
    text = facts.text()
    assert "average rating is 3.0" in text and "Comedy 5.0" in text and "Horror 1.0" in text
    assert "Drama" not in text  # at the user's mean: not a fact worth a persona line


def test_a_genre_with_too_few_ratings_is_not_stated():
    facts = measure(MOVIES, rated([("Comedy", "5.0")] * 2 + [("Drama", "3.0")] * 6))
    assert facts.higher == () and "Comedy" not in facts.text()


def test_label_facts_are_the_most_frequent_answers():
    task = TASKS["LaMP-2N"]
    items = [
        Interaction(
            user_id="u", id=f"a{i}", input=f"article: text {i}", output=label, timestamp=float(i), task="LaMP-2N"
        )
        for i, label in enumerate(["food & drink"] * 3 + ["travel"])
    ]
    assert measure(task, items).text() == "This user's most frequent answers: food & drink (75%), travel (25%)."


def test_contradictions_catch_a_wrong_mean_and_a_wrong_direction():
    facts = measure(MOVIES, rated([("Comedy", "5.0")] * 4 + [("Horror", "1.0")] * 4 + [("Drama", "3.0")] * 4))
    assert contradictions("For this user, rate Comedy higher and Horror lower.", facts) == []
    assert contradictions("For this user, their average rating is 3.1.", facts) == []
    assert contradictions("For this user, their average rating is 4.5.", facts)
    assert contradictions("For this user: they love Horror movies.", facts)
    assert contradictions("For this user, rate Comedy lower than other movies.", facts)


def test_one_fixed_answer_for_every_task_is_rejected_but_a_relative_shift_is_not():
    facts = measure(MOVIES, rated([("Comedy", "5.0")] * 4 + [("Drama", "3.0")] * 4))
    assert contradictions("For this user, the assistant should answer with a rating of 3.5.", facts)
    assert contradictions("For this user, always rate 3.", facts)
    assert contradictions("For this user, answer about 0.7 lower than you would.", facts) == []


def test_the_anchor_states_the_typical_answer_as_a_number_and_the_genres_that_move_it():
    facts = measure(MOVIES, rated([("Comedy", "5.0")] * 4 + [("Horror", "1.0")] * 4 + [("Drama", "3.0")] * 4))
    anchor = facts.anchor()
    assert anchor == "For this user, answer 3.0 for a typical movie, higher for Comedy, lower for Horror."
    assert anchor_value(anchor) == 3.0 and contradictions(anchor, facts) == []
    assert anchor_value("For this user, answer about 0.5 lower.") is None


def test_a_typical_answer_is_a_step_not_a_claim_about_the_average():
    # the loss may move the typical answer away from the past average (a user whose recent answers
    # are lower): the gate judges that step on held-back answers; only a false average is refuted
    facts = measure(MOVIES, rated([("Drama", "4.0")] * 4 + [("Drama", "5.0")] * 4))
    assert contradictions("For this user, answer 2.5 for a typical movie.", facts) == []
    assert contradictions("For this user, their average rating is 2.5.", facts)


def labelled(task: str, outputs: list[str]) -> list[Interaction]:
    return [
        Interaction(user_id="u", id=f"a{i}", input="article: x", output=o, timestamp=float(i), task=task)
        for i, o in enumerate(outputs)
    ]


def test_a_label_habit_is_the_anchor_and_the_next_labels_its_exceptions():
    items = labelled("LaMP-2N", ["travel"] * 6 + ["food & drink"] * 2 + ["sports"] * 2 + ["crime"])
    facts = measure(TASKS["LaMP-2N"], items)
    assert facts.typical == "travel"
    assert facts.anchor() == (
        "For this user, answer travel for a typical article; food & drink or sports only for an article "
        "plainly about that."
    )
    assert anchor_value(facts.anchor()) is None  # not a number: the rating step never applies to it
    assert measure(TASKS["LaMP-2N"], labelled("LaMP-2N", ["travel"] * 3)).anchor() == (
        "For this user, answer travel for a typical article."
    )
    assert measure(TASKS["LaMP-2N"], labelled("LaMP-2N", ["travel"] * 2)).anchor() == ""  # 2 answers: no habit yet


def test_no_label_anchor_without_a_habit():
    # LaMP-2N has 15 labels: 2 of 16 answers (12.5%) is under twice a uniform choice's share (13.3%)
    spread = ["travel", "travel", *(label for label in TASKS["LaMP-2N"].labels if label != "travel")]
    assert measure(TASKS["LaMP-2N"], labelled("LaMP-2N", spread)).anchor() == ""
    # LaMP-1 has 2 labels: its majority is the references' order, never a habit, even a unanimous one
    for outputs in (["[1]"] * 3 + ["[2]"], ["[1]"] * 6):
        facts = measure(TASKS["LaMP-1"], labelled("LaMP-1", outputs))
        assert facts.typical is None and facts.anchor() == ""


def test_a_label_anchor_follows_todays_habit():
    old = measure(TASKS["LaMP-2N"], labelled("LaMP-2N", ["travel"] * 4 + ["sports"]))
    new = measure(TASKS["LaMP-2N"], labelled("LaMP-2N", ["travel"] * 4 + ["sports"] * 6))
    guidance = old.anchor() + " When an article looks like crime, answer travel."
    assert with_label_anchor(guidance, new) == new.anchor() + " When an article looks like crime, answer travel."
    assert new.anchor().startswith("For this user, answer sports for a typical article; travel only")
    assert with_label_anchor("Answer briefly.", new) == "Answer briefly."
    # an anchor the rewrite extended with a rule: only the anchor's clause is replaced
    extended = old.anchor()[:-1] + "; when an article looks like crime, answer travel."
    assert with_label_anchor(extended, new) == new.anchor()[:-1] + "; when an article looks like crime, answer travel."
    # a sentence the LM wrote before it is not swallowed
    lm_text = "For this user, answer politics only when it names a politician. " + old.anchor()
    assert with_label_anchor(lm_text, new) == "For this user, answer politics only when it names a politician. " + (
        new.anchor()
    )
    # no habit today: the stale anchor goes, the rest stays
    none = measure(TASKS["LaMP-2N"], labelled("LaMP-2N", ["travel", "sports"]))
    assert with_label_anchor(old.anchor() + " Be brief.", none) == "Be brief."


def test_a_typical_label_other_than_the_habit_contradicts_the_facts():
    facts = measure(TASKS["LaMP-2N"], labelled("LaMP-2N", ["travel"] * 4 + ["sports"]))
    assert contradictions(facts.anchor(), facts) == []
    assert contradictions("For this user, answer sports for a typical article.", facts)
    assert contradictions("When an article looks like crime, answer sports.", facts) == []  # a rule, not the habit


def test_the_typical_answer_is_the_median_of_the_latest_ratings_not_the_mean_of_all():
    # 10 old ratings of 1.0, then RECENT_N of 4.0: the user's answers today are 4.0, not 2.6
    facts = measure(MOVIES, rated([("Drama", "1.0")] * 10 + [("Drama", "4.0")] * RECENT_N))
    assert facts.typical == "4.0" and facts.recent == 4.0 and facts.recent_n == RECENT_N
    assert round(facts.mean, 1) == 3.0
    assert f"The median of their {RECENT_N} latest ratings is 4." in facts.text()
    assert contradictions("Their latest ratings average 4.0.", facts) == []  # true of the latest: no lie


def test_the_recent_mean_follows_time_not_the_order_given():
    items = rated([("Drama", "1.0")] * 10 + [("Drama", "4.0")] * RECENT_N)
    assert measure(MOVIES, list(reversed(items))).typical == "4.0"


def test_a_short_history_states_no_separate_recent_mean():
    facts = measure(MOVIES, rated([("Drama", "2.0")] * 5))
    assert facts.typical == "2.0" and facts.recent_n == 5 and "latest ratings" not in facts.text()


def test_replayed_errors_are_weighed_against_the_ratings_behind_the_anchor():
    assert step_size([1.0, 1.0, 1.0]) == 1.0  # no prior: the whole error
    assert step_size([1.0, 1.0, 1.0], prior=RECENT_N) == 3 / (3 + RECENT_N)
    assert abs(step_size([1.0, 1.0, 1.0], prior=RECENT_N)) < MIN_SHIFT  # three answers do not outweigh twenty
    assert step_size([], prior=RECENT_N) == 0.0


def test_with_anchor_replaces_only_the_typical_answer():
    text = "For this user, answer 3.5 for a typical movie, higher for Comedy. Never answer 5.0."
    assert (
        with_anchor(text, "2.5")
        == "For this user, answer 2.5 for a typical movie, higher for Comedy. Never answer 5.0."
    )
    assert with_anchor("Be kind.", "2.5") == "Be kind."


def test_recent_zero_anchors_on_the_mean_of_all_ratings():
    facts = measure(MOVIES, rated([("Drama", "1.0")] * 10 + [("Drama", "4.0")] * RECENT_N), recent=0)
    assert facts.typical == "3.0" and facts.recent_n == facts.n and "latest ratings" not in facts.text()


def test_the_typical_answer_is_the_median_the_constant_with_the_lowest_absolute_error():
    facts = measure(MOVIES, rated([("Drama", "4.0")] * 15 + [("Drama", "0.5")] * 5))
    assert facts.typical == "4.0" and facts.recent == 4.0  # the mean (3.1) would miss 15 of 20 by 0.9


def filed(pairs: list[tuple[str, str]]) -> list[Interaction]:
    return [
        Interaction(user_id="u", id=f"a{i}", input=f"article: {text}", output=label, timestamp=float(i), task="LaMP-2N")
        for i, (text, label) in enumerate(pairs)
    ]


def test_label_cues_are_the_words_of_the_texts_filed_under_a_frequent_label():
    items = filed(
        [
            ("A chef shares a recipe for spring soup", "healthy living"),
            ("The recipe every chef loves this week", "healthy living"),
            ("Soup season: a chef on broth", "healthy living"),
            ("Gowns on the red carpet this week", "style & beauty"),
            ("Red carpet gowns and shoes", "style & beauty"),
            ("Carpet looks: gowns of the night", "style & beauty"),
            ("Senate votes on the budget", "politics"),  # chosen once: no cues
        ]
    )
    facts = measure(TASKS["LaMP-2N"], items, cues=True)
    assert "They file articles about chef, recipe, soup under healthy living." in facts.text()
    assert "They file articles about carpet, gowns under style & beauty." in facts.text()
    assert "under politics" not in facts.text() and "week" not in facts.text()  # one text of each label: no cue
    assert "They file" not in measure(TASKS["LaMP-2N"], items).text()  # cues are an option


def test_label_confusions_need_a_majority_and_three_answers_other_than_the_apparent_label():
    from persona_dspy.optimizers.grounding import label_confusions

    items = filed([(f"text {i}", label) for i, label in enumerate(["healthy living"] * 3 + ["food & drink"])])
    items += filed([(f"more {i}", label) for i, label in enumerate(["women", "women", "style & beauty"])])
    items += filed([(f"news {i}", label) for i, label in enumerate(["politics"] * 4)])
    items = [it.model_copy(update={"id": f"x{i}"}) for i, it in enumerate(items)]
    looks = {it.id: "food & drink" for it in items[:4]} | {it.id: "style & beauty" for it in items[4:7]}
    looks |= {it.id: "politics" for it in items[7:]}
    answers = [(it, it.output) for it in items]
    # food & drink texts: 3 of 4 filed under healthy living; style & beauty: 2 of 3 under women (too few);
    # politics texts under politics: no confusion
    assert label_confusions(answers, looks) == (("food & drink", "healthy living"),)
    assert label_confusions(answers, {}) == ()
    facts = measure(TASKS["LaMP-2N"], items, looks=looks)
    assert "They file articles that look like food & drink under healthy living." in facts.text()
    assert "look like" not in measure(TASKS["LaMP-2N"], items).text()  # an option


def test_label_confusions_are_the_best_supported_first_and_at_most_two():
    from persona_dspy.optimizers.grounding import MAX_CONFUSIONS, label_confusions

    pairs = [("sports", "travel")] * 3 + [("politics", "crime")] * 5 + [("women", "parents")] * 4
    items = filed([(f"t{i}", chosen) for i, (_, chosen) in enumerate(pairs)])
    looks = {it.id: seen for it, (seen, _) in zip(items, pairs)}
    found = label_confusions([(it, it.output) for it in items], looks)
    assert len(found) == MAX_CONFUSIONS == 2
    assert found == (("politics", "crime"), ("women", "parents"))


def test_apparent_labels_are_the_nearest_label_names_by_the_memorys_embedder(memory):
    from persona_dspy.optimizers.grounding import apparent_labels

    from scripted import articles

    texts = [
        "A chef shares a recipe for pasta with garlic and fresh tomatoes",
        "The best chocolate cake recipe for a birthday dinner",
        "The senate votes on the new election law",
        "The quarterback scored three touchdowns in the football game",
    ]
    memory.add(articles("looks", texts, ["healthy living"] * 4))
    memory.add(articles("other", ["Parliament debates the budget"], ["politics"]))
    looks = apparent_labels(memory, "looks", TASKS["LaMP-2N"].labels)
    assert looks == {"a0": "food & drink", "a1": "food & drink", "a2": "politics", "a3": "sports"}


def test_the_label_anchor_reads_for_any_noun():
    from persona_dspy.optimizers.grounding import UserFacts

    facts = UserFacts(kind="label", n=4, labels=(("hit", 3), ("flop", 1)), typical="hit", noun="movie")
    assert facts.anchor() == "For this user, answer hit for a typical movie; flop only for a movie plainly about that."
    assert with_label_anchor(facts.anchor(), facts) == facts.anchor()

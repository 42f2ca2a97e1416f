"""Property tests over random interaction sets (real embedded Qdrant, real embedder)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from persona_dspy import Settings
from persona_dspy.data import Interaction
from persona_dspy.memory import EpisodicMemory

WORDS = ["jazz", "rock", "movie", "drama", "comedy", "guitar", "strings", "news", "sports", "recipe"]

records = st.lists(
    st.tuples(
        st.sampled_from(["ann", "ben", "cy"]),
        st.integers(0, 30),
        st.lists(st.sampled_from(WORDS), min_size=1, max_size=4),
    ),
    min_size=1,
    max_size=14,
    unique_by=lambda r: (r[0], r[1]),
)
PROPS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def build(rows) -> list[Interaction]:
    return [
        Interaction(user_id=u, id=f"{u}-{ts}", input=" ".join(words), output=f"{u}:{ts}", timestamp=float(ts))
        for u, ts, words in rows
    ]


def fresh(embedder) -> EpisodicMemory:
    return EpisodicMemory(Settings(qdrant=":memory:"), embedder=embedder)


@PROPS
@given(
    rows=records, user=st.sampled_from(["ann", "ben", "cy"]), before=st.integers(0, 31), query=st.sampled_from(WORDS)
)
def test_recall_never_returns_another_users_or_a_future_episode(embedder, rows, user, before, query):
    items = build(rows)
    with fresh(embedder) as mem:
        mem.add(items)
        if not mem.has_user(user):
            return
        got = mem.recall(user, query, k=50, before=float(before))
        assert all(e.interaction.user_id == user and e.interaction.timestamp < before for e in got)
        expected = {it.id for it in items if it.user_id == user and it.timestamp < before}
        assert {e.interaction.id for e in got} == expected  # and nothing allowed is missing


@PROPS
@given(rows=records)
def test_ingest_twice_equals_ingest_once(embedder, rows):
    items = build(rows)
    with fresh(embedder) as once, fresh(embedder) as twice:
        once.add(items)
        twice.add(items)
        assert twice.add(items) == 0
        for user in once.users():
            assert once.history(user) == twice.history(user)
        assert once.count() == twice.count() == len(items)


@PROPS
@given(rows=records, victim=st.sampled_from(["ann", "ben", "cy"]))
def test_forget_removes_exactly_one_user(embedder, rows, victim):
    items = build(rows)
    with fresh(embedder) as mem:
        mem.add(items)
        before = {u: mem.count(u) for u in ("ann", "ben", "cy")}
        removed = mem.forget(victim)
        assert removed == before[victim] and mem.count(victim) == 0
        assert all(mem.count(u) == before[u] for u in before if u != victim)


@PROPS
@given(
    rows=records,
    user=st.sampled_from(["ann", "ben", "cy"]),
    before=st.integers(0, 31),
    query=st.sampled_from(WORDS),
    k=st.integers(1, 5),
)
def test_a_user_snapshot_answers_like_the_store(embedder, rows, user, before, query, k):
    with fresh(embedder) as mem:
        mem.add(build(rows))
        if not mem.has_user(user):
            return
        snap = mem.snapshot(user)
        assert snap.history(user, before) == mem.history(user, before)
        assert snap.recent(user, k, before) == mem.recent(user, k, before)
        got = {e.interaction.id: round(e.score, 4) for e in snap.recall(user, query, k=50, before=before)}
        want = {e.interaction.id: round(e.score, 4) for e in mem.recall(user, query, k=50, before=before)}
        assert got == want

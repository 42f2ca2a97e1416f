"""Records and loaders: precise errors with line numbers, nothing returned from a bad file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from persona_dspy.data import load_interactions, load_sample_users, load_shared
from persona_dspy.errors import MalformedInteractionError

DATA = Path(__file__).parent / "data"  # tiny copies of the shared data (tests/data/README.md)


def write(tmp_path: Path, lines: list[str | bytes]) -> Path:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return path


def rec(i: int, **kw) -> str:
    base = {"user_id": "u1", "id": f"i{i}", "input": f"task {i}", "output": "4.0", "timestamp": float(i)}
    return json.dumps({**base, **kw})


def test_plain_jsonl_loads_in_file_order(tmp_path):
    items = load_interactions(write(tmp_path, [rec(1), rec(2)]))
    assert [i.id for i in items] == ["i1", "i2"]


@pytest.mark.parametrize(
    "bad, field",
    [
        ("{not json", None),
        (json.dumps({"user_id": "u1", "id": "x", "output": "1", "timestamp": 1}), "input"),
        (json.dumps({"user_id": "u1", "id": "x", "input": "a", "output": "1", "timestamp": "yesterday"}), "timestamp"),
        (json.dumps([1, 2]), None),
    ],
)
def test_malformed_line_is_reported_with_its_line_number(tmp_path, bad, field):
    with pytest.raises(MalformedInteractionError) as exc:
        load_interactions(write(tmp_path, [rec(1), bad]))
    assert exc.value.line == 2
    assert exc.value.field == field


def test_duplicate_ids_are_rejected(tmp_path):
    with pytest.raises(MalformedInteractionError, match="duplicate") as exc:
        load_interactions(write(tmp_path, [rec(1), rec(1, input="changed")]))
    assert exc.value.line == 2


def test_non_utf8_is_rejected(tmp_path):
    with pytest.raises(MalformedInteractionError, match="UTF-8") as exc:
        load_interactions(write(tmp_path, [rec(1), b'{"user_id": "u1", "id": "\xff"}']))
    assert exc.value.line == 2


def test_shared_schema_profile_becomes_past_and_query_is_held_out():
    cases = load_shared(DATA / "movielens_rating.jsonl")
    assert [c.user_id for c in cases] == ["37", "133", "547"]
    assert [len(c.interactions) for c in cases] == [20, 31, 15]
    for case in cases:
        assert case.query is not None
        assert all(it.timestamp < case.query.timestamp for it in case.interactions)
        assert case.query.id not in {it.id for it in case.interactions}


def test_lamp_profiles_get_positional_time():
    case = load_shared(DATA / "lamp2n.jsonl")[0]
    assert [it.timestamp for it in case.interactions] == sorted(it.timestamp for it in case.interactions)
    assert case.query.timestamp > case.interactions[-1].timestamp
    assert case.query.output in {"business", "politics", "food & drink"} or case.query.output


def test_bundled_sample_users_load():
    users = load_sample_users()
    assert len(users) == 6 and all(len(u) >= 10 for u in users)


def shared_line(**kw) -> str:
    """One line of the shared schema (a MovieLens user with two past ratings), with fields replaced."""
    profile = [{"movie": f"Film {i}", "genres": "Drama", "rating": 4.0, "timestamp": 100 + i} for i in range(2)]
    base = {"id": "q1", "task": "movielens_rating", "user_id": "u1", "input": "movie: Heat", "output": "4.0"}
    return json.dumps({**base, "timestamp": 200, "profile": profile, **kw})


@pytest.mark.parametrize(
    "fields, field, says",
    [
        ({"timestamp": "abc"}, "timestamp", "must be a number"),
        ({"timestamp": None}, "timestamp", "must be a number"),
        ({"timestamp": True}, "timestamp", "must be a number"),
        ({"user_id": True}, "user_id", "must be a string"),
        ({"user_id": ["a", "b"]}, "user_id", "must be a string"),
        ({"user_id": None}, "user_id", "must be a string"),
        ({"task": 7}, "task", "must be a string"),
        ({"id": None}, "id", "must be a string"),
    ],
)
def test_a_shared_line_with_a_bad_query_field_names_it(tmp_path, fields, field, says):
    """Never coerced (``True`` would have become the user "True") nor a bare ``ValueError``."""
    with pytest.raises(MalformedInteractionError, match=says) as exc:
        load_shared(write(tmp_path, [shared_line(), shared_line(**{"id": "q2", **fields})]))
    assert exc.value.line == 2 and exc.value.field == field


def test_a_shared_profile_item_over_the_field_limit_is_rejected_not_truncated(tmp_path):
    from persona_dspy.data.records import MAX_FIELD_CHARS

    long = {"movie": "x" * MAX_FIELD_CHARS, "genres": "Drama", "rating": 4.0, "timestamp": 1}
    with pytest.raises(MalformedInteractionError, match="input") as exc:
        load_shared(write(tmp_path, [shared_line(profile=[long])]))
    assert exc.value.line == 1


def test_a_blank_user_id_is_rejected_and_a_numeric_one_is_read_as_text(tmp_path):
    with pytest.raises(MalformedInteractionError, match="blank") as exc:
        load_interactions(write(tmp_path, [rec(1), rec(2, user_id="   ")]))
    assert exc.value.line == 2 and exc.value.field == "user_id"
    assert load_interactions(write(tmp_path, [rec(1, user_id=37)]))[0].user_id == "37"
    assert load_shared(write(tmp_path, [shared_line(user_id=37)]))[0].user_id == "37"  # as in a plain file


@pytest.mark.parametrize("field", ["user_id", "id"])
def test_an_id_with_a_control_character_is_rejected(tmp_path, field):
    """The store keys a record by user and id joined with \\x1f: ("a\\x1fb", "1") and ("a", "b\\x1f1") would collide."""
    with pytest.raises(MalformedInteractionError, match="control character") as exc:
        load_interactions(write(tmp_path, [rec(1, **{field: "a\x1fb"})]))
    assert exc.value.field == field


def test_a_file_of_the_other_schema_says_which_loader_reads_it(tmp_path):
    with pytest.raises(MalformedInteractionError, match="ingest --shared"):
        load_interactions(write(tmp_path, [shared_line()]))
    with pytest.raises(MalformedInteractionError, match="without --shared"):
        load_shared(write(tmp_path, [rec(1)]))


@pytest.mark.parametrize(
    "item, says",
    [
        ({"movie": "Heat", "genres": "Drama", "rating": 4.0}, "profile item 0: missing field 'timestamp'"),
        (7, "profile item 0: must be a JSON object, got int"),
        ({"title": "x"}, "profile item 0: unrecognised profile item with keys ['title']: expected"),
    ],
)
def test_a_bad_profile_item_says_what_is_wrong_with_it(tmp_path, item, says):
    with pytest.raises(MalformedInteractionError, match=re.escape(says)) as exc:
        load_shared(write(tmp_path, [shared_line(profile=[item])]))
    assert exc.value.field == "profile.0"


def test_a_lamp_query_timestamp_is_checked_though_lamp_time_is_positional(tmp_path):
    line = json.loads((DATA / "lamp2n.jsonl").read_text().splitlines()[0])
    with pytest.raises(MalformedInteractionError, match="must be a number") as exc:
        load_shared(write(tmp_path, [json.dumps({**line, "timestamp": "abc"})]))
    assert exc.value.field == "timestamp"

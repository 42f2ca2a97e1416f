"""Facts about a user, measured from their past interactions: what a persona may state.

A 1.5B model cannot infer a user's habits from three replayed examples, and when asked to it
invents them ("This user tends to overestimate their own performance."). The optimizer therefore
measures the facts itself — how this user answers overall, and where their answers differ for one
facet of the task (a movie genre, ...) — hands them to the persona rewrite, and rejects a rewrite
that contradicts them (``contradictions``).

Facts are computed only from interactions strictly before the ones the compile replays or gates
on, so a replayed answer never reaches the persona that is scored on it.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from persona_dspy.data.records import Interaction
from persona_dspy.memory.protocol import MemoryReader
from persona_dspy.signatures.tasks import TaskSpec

MIN_FACET_COUNT = 3
"""A facet (genre, ...) is stated only when the user answered at least this many of its items."""

MIN_FACET_SHIFT = 0.4
"""... and its mean rating differs from the user's overall mean by at least this much (stars)."""

MAX_FACETS = 3
"""At most this many facets per direction (higher / lower), the largest differences first."""

RECENT_N = 20
"""A rating task's typical answer is the median of the user's latest this-many ratings, not the mean
of all of them: users drift, and the median is the constant with the lowest absolute error. On the 240
MovieLens dev users it predicts the next rating with MAE 0.665 against 0.746 for the mean of all past
ratings (``benchmarks/ceiling.py``)."""

HABIT = 2.0
"""Label tasks: the most frequent label is the user's typical answer when its share of their answers is
at least this many times the share of a uniform choice among the task's labels (LaMP-2N, 15 labels:
13.3%), and it was chosen at least ``MIN_HABIT_COUNT`` times. A task of ``HABIT`` labels or fewer has no
habit (LaMP-1's majority is an artefact of the references' order)."""

MIN_HABIT_COUNT = 3

MIN_CUE_COUNT = 3
"""Label tasks: a label's cue words are stated only when the user chose it at least this many times ..."""

MAX_CUES = 3
"""... as at most this many words, each in at least two of the texts filed under it, more frequent there than in
the user's other texts ("They file articles about recipe, chef under healthy living.")."""

MIN_CONFUSION_COUNT = 3
"""Label tasks (``confusion=True``): "They file articles that look like X under Y." is stated when at least this many
of the user's past texts look like X (``apparent_labels``) and the user chose Y, not X, for at least this many of them
and for more than half (at most ``MAX_CONFUSIONS`` such rules, the best supported first)."""

MAX_CONFUSIONS = 2

_CUE_WORD = re.compile(r"[a-z]{4,}")
_STOPWORDS = frozenset(
    """about above after again against also although always among another anything around article away back
    because been before being below best better between both came come comes could days does doing done
    down during each either else even ever every first from further gets getting give given goes going
    good great have having here hers herself himself into itself just keep know last less like little
    long look made make makes making many might more most much must myself need never next nothing often
    once only other others ought ours over part people perhaps really right said same says seem should
    show since some something still such take than that their theirs them themselves then there these
    they thing things think this those though three through time times today told took toward under
    until upon used using very want well were what whatever when where whether which while will with
    within without work would year years your yours yourself""".split()  # noqa: SIM905 (a word list reads better as text)
)
"""Words too common to tell one label's texts from another's."""

ANCHOR_LEAD = "For this user, answer"
ANCHOR_NUMBER = re.compile(r"answer (?:about |around )?(\d(?:\.\d)?) for a typical \w+", re.I)
"""The typical answer a guidance states; group 1 is the number."""
STATED_ANCHOR = re.compile(rf"{ANCHOR_LEAD} (?:about |around )?\d(?:\.\d)? for a typical \w+")
"""A rating guidance states the anchor as ``UserFacts.anchor`` does ("For this user, answer 3.5 for a typical
movie"), not merely a number next to "typical" ("do not answer 5 for a typical movie")."""


def anchor_value(guidance: str) -> float | None:
    """The typical answer a guidance states ("answer 3.5 for a typical movie"), if it states one."""
    match = ANCHOR_NUMBER.search(guidance)
    return float(match.group(1)) if match else None


def with_anchor(guidance: str, value: str) -> str:
    """``guidance`` with the typical answer it states replaced by ``value`` (unchanged if it states none)."""
    return ANCHOR_NUMBER.sub(lambda m: m.group(0).replace(m.group(1), value, 1), guidance, count=1)


LABEL_ANCHOR = re.compile(
    rf"{ANCHOR_LEAD} [^.;\n]+? for a typical \w+(?:; [^.;\n]+? only for an? \w+ plainly about that)?(?=[.;])"
)
"""A label task's typical answer as ``UserFacts.anchor`` states it, without its closing punctuation: one
clause, never across a sentence the LM wrote before or after it."""

_STATED_LABEL = re.compile(rf"{ANCHOR_LEAD} ([^.;\n]+?) for a typical \w+")


def with_label_anchor(guidance: str, facts: UserFacts) -> str:
    """``guidance`` (a label task's) with the anchor it states replaced by the one ``facts`` state, or
    removed when ``facts`` show no habit: a recompile starts from today's habit."""
    if facts.kind != "label":
        return guidance
    anchor = facts.anchor()
    if anchor:
        return LABEL_ANCHOR.sub(lambda _: anchor[:-1], guidance, count=1)
    return re.sub(rf"(?:{LABEL_ANCHOR.pattern})[.;]\s*", "", guidance, count=1).strip()


_FACETS = re.compile(r"genres?:\s*(.+?)\s*$", re.I | re.M)


def facets(text: str) -> list[str]:
    """The facets of one task text: the genres of a movie (``genres: A, B``); none otherwise."""
    match = _FACETS.search(text)
    return [g.strip() for g in match.group(1).split(",") if g.strip()] if match else []


@dataclass(frozen=True)
class FacetStat:
    name: str
    mean: float
    count: int


@dataclass(frozen=True)
class UserFacts:
    """What the user's answers show, for rating tasks (mean, usual range, facet shifts) and label
    tasks (most frequent labels)."""

    kind: str
    n: int
    mean: float | None = None
    low: float | None = None
    high: float | None = None
    higher: tuple[FacetStat, ...] = ()
    lower: tuple[FacetStat, ...] = ()
    labels: tuple[tuple[str, int], ...] = ()
    cues: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Label tasks (``cues=True``): per label the user chose often, the words of the texts they filed under it."""
    confusions: tuple[tuple[str, str], ...] = ()
    """Label tasks (``confusion=True``): (the label the texts look like, the label the user chose for most of them)."""
    all_facets: dict[str, FacetStat] = field(default_factory=dict)
    recent: float | None = None
    """Rating tasks: the median of the latest ``recent_n`` ratings."""
    recent_n: int = 0
    typical: str | None = None
    """The guidance's anchor. Rating tasks: the recent median as a valid answer (rounded to the task's
    step). Label tasks: the most frequent label when it is a habit (``HABIT``), else None."""
    noun: str = "item"
    """What the user answers about ("movie" for a task whose inputs read ``movie: ...``)."""

    def statements(self) -> list[str]:
        """The facts as short sentences a persona can carry as they are."""
        if not self.n:
            return []
        if self.kind == "rating":
            out = [
                (
                    f"This user's average rating is {self.mean:.1f}; half of their ratings are between "
                    f"{self.low:g} and {self.high:g}."
                )
            ]
            if self.recent is not None and self.recent_n < self.n:
                out.append(f"The median of their {self.recent_n} latest ratings is {self.recent:g}.")
            if self.higher:
                out.append(
                    "They rate "
                    + ", ".join(f"{f.name} {f.mean:.1f} on average" for f in self.higher)
                    + ": higher than their average."
                )
            if self.lower:
                out.append(
                    "They rate "
                    + ", ".join(f"{f.name} {f.mean:.1f} on average" for f in self.lower)
                    + ": lower than their average."
                )
            return out
        if self.kind == "label" and self.labels:
            total = self.n
            return [
                "This user's most frequent answers: "
                + ", ".join(f"{label} ({100 * c / total:.0f}%)" for label, c in self.labels)
                + ".",
                *(f"They file {self.noun}s about {', '.join(words)} under {label}." for label, words in self.cues),
                *(f"They file {self.noun}s that look like {seen} under {chosen}." for seen, chosen in self.confusions),
            ]
        return []

    def text(self) -> str:
        return " ".join(self.statements())

    def anchor(self) -> str:
        """The measured starting guidance: the user's typical answer, stated as an answer to copy.

        A rating task states the typical answer as a number, then which facets go higher or lower: a
        1.5B model ignores "rate lower than usual" but copies a number it is given. A label task states
        the user's most frequent label as the typical answer and their next most frequent labels as the
        exceptions to keep for an item plainly about them: told only the label shares, the model labels
        the item's topic from the whole label set, labels this user may never have chosen. Empty when
        nothing was measured."""
        if self.kind == "label" and self.typical is not None:
            usual, others = self.typical, [label for label, _ in self.labels if label != self.typical]
            text = f"{ANCHOR_LEAD} {usual} for a typical {self.noun}"
            if others:
                text += f"; {' or '.join(others)} only for {with_article(self.noun)} plainly about that"
            return text + "."
        if self.kind != "rating" or not self.n or self.typical is None:
            return ""
        text = f"{ANCHOR_LEAD} {self.typical} for a typical {self.noun}"
        if self.higher:
            text += ", higher for " + ", ".join(f.name for f in self.higher)
        if self.lower:
            text += ", lower for " + ", ".join(f.name for f in self.lower)
        return text + "."


def with_article(noun: str) -> str:
    """``"an article"``, ``"a movie"``."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def noun_of(task: TaskSpec) -> str:
    """The task's item noun, from its prompt marker (``movie:`` -> "movie"); "item" otherwise."""
    marker = next((m.rstrip(": ").lower() for m in task.prompt_markers if m.rstrip(": ").isalpha()), "")
    return marker or "item"


def _quartiles(values: list[float]) -> tuple[float, float]:
    s = sorted(values)
    return s[len(s) // 4], s[(3 * len(s)) // 4]


def label_cues(task: TaskSpec, answers: Sequence[tuple[Interaction, str]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Per label chosen at least ``MIN_CUE_COUNT`` times (most frequent first, at most ``MAX_FACETS``), up to
    ``MAX_CUES`` words that appear in at least two of its texts, ranked by their share of those texts minus
    their share of the user's other texts (only words more frequent under the label)."""
    docs = [
        ({w for w in _CUE_WORD.findall(task.compact(it.input).lower()) if w not in _STOPWORDS}, a) for it, a in answers
    ]
    counts: dict[str, int] = defaultdict(int)
    for _, a in docs:
        counts[a] += 1
    out: list[tuple[str, tuple[str, ...]]] = []
    for label, n_in in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if n_in < MIN_CUE_COUNT or len(out) == MAX_FACETS:
            break
        inside = [d for d, a in docs if a == label]
        outside = [d for d, a in docs if a != label]
        df_in: dict[str, int] = defaultdict(int)
        for d in inside:
            for w in d:
                df_in[w] += 1
        ranked = sorted(
            (
                (df_in[w] / n_in - sum(w in d for d in outside) / max(len(outside), 1), df_in[w], w)
                for w in df_in
                if df_in[w] >= 2
            ),
            key=lambda t: (-t[0], -t[1], t[2]),
        )
        words = tuple(w for lift, _, w in ranked if lift > 0)[:MAX_CUES]
        if words:
            out.append((label, words))
    return tuple(out)


def apparent_labels(memory: MemoryReader, user_id: str, labels: Sequence[str]) -> dict[str, str]:
    """Interaction id -> the label its text looks like: the label whose name the memory's embedder finds most
    similar to the text, among ``labels`` (one ``recall`` per label over the user's stored interactions; no LM
    call). Only the texts are read, never the answers, so it may cover every stored interaction."""
    n = memory.count(user_id)
    best: dict[str, tuple[float, str]] = {}
    for label in labels:
        for episode in memory.recall(user_id, label, k=n):
            seen = best.get(episode.interaction.id)
            if seen is None or episode.score > seen[0]:
                best[episode.interaction.id] = (episode.score, label)
    return {uid: label for uid, (_, label) in best.items()}


def label_confusions(
    answers: Sequence[tuple[Interaction, str]], looks: Mapping[str, str]
) -> tuple[tuple[str, str], ...]:
    """The apparent labels (``looks``: interaction id -> label) the user answered with another label, most of the
    time and at least ``MIN_CONFUSION_COUNT`` times: (apparent, chosen), the best supported first."""
    chosen: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for it, answer in answers:
        if it.id in looks:
            chosen[looks[it.id]][answer] += 1
    found = []
    for seen, counts in chosen.items():
        answer, count = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        if answer != seen and count >= MIN_CONFUSION_COUNT and 2 * count > sum(counts.values()):
            found.append((-count, seen, answer))
    return tuple((seen, answer) for _, seen, answer in sorted(found)[:MAX_CONFUSIONS])


def measure(
    task: TaskSpec,
    history: Sequence[Interaction],
    recent: int = RECENT_N,
    *,
    cues: bool = False,
    looks: Mapping[str, str] | None = None,
) -> UserFacts:
    """The facts of ``history`` (already bounded in time by the caller); a rating task's typical
    answer is the median of the latest ``recent`` ratings (``0``: the mean of all of them, as before).
    ``cues``: a label task also states the words of the texts filed under each frequent label. ``looks``
    (``apparent_labels``): a label task also states which apparent labels the user files under another one."""
    ordered = sorted(history, key=lambda it: (it.timestamp, it.id))
    answers = [(it, a) for it in ordered if (a := task.parse(it.output)) is not None]
    if not answers:
        return UserFacts(kind=task.kind, n=0)
    if task.kind == "rating":
        values = [float(a) for _, a in answers]
        mean = sum(values) / len(values)
        latest = values[-recent:] if recent > 0 else values
        recent_typical = statistics.median(latest) if recent > 0 else mean
        low, high = _quartiles(values)
        by: dict[str, list[float]] = defaultdict(list)
        for it, a in answers:
            for name in facets(task.compact(it.input)):
                by[name].append(float(a))
        stats = {name: FacetStat(name, sum(v) / len(v), len(v)) for name, v in by.items()}
        ok = [s for s in stats.values() if s.count >= MIN_FACET_COUNT]
        higher = sorted((s for s in ok if s.mean - mean >= MIN_FACET_SHIFT), key=lambda s: s.mean - mean, reverse=True)
        lower = sorted((s for s in ok if mean - s.mean >= MIN_FACET_SHIFT), key=lambda s: mean - s.mean, reverse=True)
        return UserFacts(
            kind="rating",
            n=len(values),
            typical=task.parse(f"{recent_typical:.3f}"),
            recent=recent_typical,
            recent_n=len(latest),
            noun=noun_of(task),
            mean=mean,
            low=low,
            high=high,
            higher=tuple(higher[:MAX_FACETS]),
            lower=tuple(lower[:MAX_FACETS]),
            all_facets=stats,
        )
    counts: dict[str, int] = defaultdict(int)
    for _, a in answers:
        counts[a] += 1
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    found = label_cues(task, answers) if cues and task.kind == "label" else ()
    habit = (
        task.kind == "label"
        and len(task.labels) > HABIT
        and top[0][1] >= MIN_HABIT_COUNT
        and top[0][1] / len(answers) >= HABIT / len(task.labels)
    )
    return UserFacts(
        kind=task.kind,
        n=len(answers),
        labels=tuple(top),
        cues=found,
        confusions=label_confusions(answers, looks) if looks and task.kind == "label" else (),
        noun=noun_of(task),
        typical=top[0][0] if habit else None,
    )


_MEAN_CLAIM = re.compile(r"average (?:rating )?(?:is |of )?(?:about |around )?(\d(?:\.\d+)?)", re.I)
_FIXED_ANSWER = re.compile(
    r"\b(?:answer|respond|rate)\s+(?:with\s+)?(?:a\s+rating\s+of\s+|only\s+|always\s+)?"
    r"\d(?:\.\d)?\b|\b(?:with|give)\s+a\s+rating\s+of\s+\d(?:\.\d)?\b",
    re.I,
)
_DIRECTION = re.compile(r"\b(higher|lower|more|less|like|love|enjoy|dislike|hate)\b", re.I)


def contradictions(text: str, facts: UserFacts, tolerance: float = 0.3) -> list[str]:
    """Statements of ``text`` that the measured facts refute (empty: nothing contradicts them).

    Checked: an average rating that differs from both the measured mean and the recent median by more than ``tolerance``; a
    facet (genre) said to be rated higher / liked while its measured mean is below the user's
    average (or lower / disliked while above), judged only in sentences naming one facet; and one
    fixed answer for every task ("answer with a rating of 3.5"), which no measured preference supports.
    Label tasks: a typical answer ("answer travel for a typical article") that is not the user's habit.
    """
    if facts.kind == "label" and facts.n:
        return [
            f"states {m.group(1)!r} as the typical answer, measured habit {facts.typical or '(none)'}"
            for m in _STATED_LABEL.finditer(text)
            if m.group(1) != facts.typical
        ]
    if facts.kind != "rating" or not facts.n or facts.mean is None:
        return []
    found = []
    for m in _FIXED_ANSWER.finditer(text):
        after = text[m.end() : m.end() + 30]
        if not re.search(r"\b(lower|higher|less|more|than|typical)\b", after, re.I):
            found.append(f"states one fixed answer ({m.group(0).strip()!r}), not a preference")
    for m in _MEAN_CLAIM.finditer(text):
        claimed = float(m.group(1))
        recent = facts.recent if facts.recent is not None else facts.mean
        if abs(claimed - facts.mean) > tolerance and abs(claimed - recent) > tolerance:
            found.append(f"states an average rating of {claimed:g}, measured {facts.mean:.2f}")
    for sentence in re.split(r"(?<=[.;!?])\s+|\n", text):
        named = [
            f
            for name, f in facts.all_facets.items()
            if f.count >= MIN_FACET_COUNT and re.search(rf"\b{re.escape(name)}\b", sentence, re.I)
        ]
        words = {w.lower() for w in _DIRECTION.findall(sentence)}
        if len(named) != 1 or not words:
            continue
        f = named[0]
        up = bool(words & {"higher", "more", "like", "love", "enjoy"})
        down = bool(words & {"lower", "less", "dislike", "hate"})
        if up and not down and f.mean < facts.mean - MIN_FACET_SHIFT / 2:
            found.append(f"says {f.name} is rated higher, measured {f.mean:.1f} vs average {facts.mean:.1f}")
        if down and not up and f.mean > facts.mean + MIN_FACET_SHIFT / 2:
            found.append(f"says {f.name} is rated lower, measured {f.mean:.1f} vs average {facts.mean:.1f}")
    return found

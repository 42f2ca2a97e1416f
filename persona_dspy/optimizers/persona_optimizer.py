"""PersonaOptimizer: test-time preference alignment of a user's persona, grounded in measured facts.

1. **Ground.** Measure the user's facts (how they answer overall, and per facet such as a movie
   genre) from the interactions *before* the replayed and gated ones, and write them into the
   persona under the task's base instructions (``grounding``, ``prompts.compose``). For a rating
   task the starting guidance is the *anchor*: the user's typical answer as a number, and the facets
   that go higher or lower (``anchor=True``; a 1.5B model copies a number, it ignores "rate lower");
   for a label task, the user's habitual label as the typical answer and their next labels as the
   exceptions (without it the model labels the item's topic among all the task's labels).
2. **Replay** the user's latest ``n_recent`` interactions with that persona (memory bounded by each
   interaction's own time) and compare each simulated answer with what the user really did.
3. **Textual loss and gradient**: the measured errors in words (plus an optional LM critique that
   may not contradict them), back-propagated by TextGrad to the *guidance*, the one trainable part.
4. **Step**: TextGrad's TGD rewrites the guidance into ``candidates`` rewrites; a rewrite that
   contradicts the facts is rejected; the others are replayed and the best is kept only if it
   replays strictly better.
5. **Gate** (``_decide``): the candidate is promoted only with evidence. A guidance the LM wrote needs
   a higher mean score than production on the ``n_val`` held-back interactions by more than
   ``min_gain``, and more wins than losses there. A candidate that states only the measured facts (no
   LM rewrite kept) already has its evidence, the ratings it was measured on: it is promoted unless
   the held-back interactions show it worse (a lower mean score, or more losses than wins).
   ``trust_measured=False`` asks it to win too (the gate before; on the users it was tested on it
   left most users on the default persona, which answered worse than the measured anchor).
"""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from persona_dspy.agent import PersonaAgent
from persona_dspy.data.records import Interaction
from persona_dspy.errors import ConfigurationError, LMOutputError, UnknownUserError
from persona_dspy.optimizers import prompts
from persona_dspy.optimizers.base import Budget, GatedPersonaOptimizer, check_numbers
from persona_dspy.optimizers.grounding import (
    LABEL_ANCHOR,
    RECENT_N,
    STATED_ANCHOR,
    UserFacts,
    anchor_value,
    apparent_labels,
    contradictions,
    measure,
    with_anchor,
    with_label_anchor,
)
from persona_dspy.results import CompileResult, Step
from persona_dspy.signatures import get_task

SCORE_TOLERANCE = 1e-9
"""Replay scores closer than this are equal (means of per-interaction scores)."""

MIN_LEAK_CHARS = 12
"""Replayed free-text answers at least this long are redacted from a rewritten guidance (no memorized
answers). A label task's labels are its output contract, not answers to memorize: never redacted."""

MAX_GUIDANCE_CHARS = 400

FACT_KINDS = ("rating", "label")
"""Task kinds whose facts ``measure`` states (a free-text task has none to keep)."""

MIN_FACTS = 3
"""The ``min_facts`` under test: interactions the facts keep at least, before the replayed and gated
ones, when the history allows (``PersonaOptimizer.windows``): as many as a facet or a label habit needs
to be stated."""


class PersonaOptimizer(GatedPersonaOptimizer):
    """``PersonaOptimizer(n_recent=3, iterations=1).compile(agent, trainset=history) -> PersonaAgent``.

    Cost: ``n_recent`` replays, then per iteration ``candidates`` rewrites (+1 critique with
    ``critique=True``) and ``n_recent`` replays per usable rewrite, and ``2 * n_val`` gate replays
    when the persona changed (``gate_replayed`` and a measured candidate: ``2 * n_val + n_recent``).
    Defaults (3 + 1 + 3 + 2 * 4): 15 LM calls at most.

    The loop stops early when every replayed answer matches the user, when a rating replay's step is
    below ``MIN_SHIFT`` (its mean signed error weighed against the ``recent`` ratings behind the
    anchor: no step, no LM call), when no rewrite replays better than the current persona, or when the
    rewrite is unchanged; ``result.stopped`` says which. A promoted persona is re-grounded on all the
    user's past up to the compile (``_finalize``; ``result.gated_persona`` keeps the gated text).

    Ablations: ``ground=False`` leaves the facts out; ``anchor=False`` starts from the facts alone
    (no typical answer: for a label task, no habit) and states a rating step as a direction; ``recent=0`` anchors on the mean of all past ratings, steps by
    the whole replayed error and promotes the gated text as it is (the method before ``recent``);
    ``critique=True`` adds an LM critique to the measured loss; ``trust_measured=False`` asks a
    candidate of measured facts alone to win the gate as an LM-written guidance must (by default it is
    promoted when the gate shows it no worse: a tie is promoted); ``cues=True`` (label tasks) adds to the facts the words of the
    texts the user filed under each frequent label ("They file articles about recipe, chef under
    healthy living"), the label analog of a rating's genre facets; ``confusion=True`` (label tasks; the default
    since 2026-11-27, when it passed its pre-registered test on the 62 LaMP-2N queries) adds the labels the user
    files texts of another apparent label under ("They file articles that look like food & drink under healthy
    living": the apparent label is the one whose name the memory's embedder finds nearest to the text, no LM
    call; ``confusion=False`` is the method before); ``label_rules=False`` states a label
    replay's step as a direction ("tell the assistant when this user chooses Y instead of X") instead of
    the rules to add ("when an article looks like X, answer Y"). ``gate_replayed=True`` (an experiment,
    off until measured) gates a candidate of measured facts alone on the replayed interactions as well as
    the ``n_val`` held-back ones, reusing its replay answers: with ``n_val=1`` the gate scores the same 4
    interactions as today's, the latest ones, for 8 LM calls instead of 11. ``lean=True`` (an experiment,
    off until measured) leaves the facts out of the persona when its guidance states the anchor (the facts
    still ground the loss and bound the rewrite): every replay, gate and answer prompt is shorter.

    ``min_facts=3`` (an experiment, off until measured) narrows the windows of a short history
    (``windows``) so that the facts keep at least that many interactions before the replayed and gated
    ones where the history allows it: a 7-item past replays 2 and gates on 2, measuring the facts on 3,
    where the windows as given (``min_facts=0``) leave it no facts at all.
    """

    name = "PersonaOptimizer"

    def __init__(
        self,
        n_recent: int = 3,
        iterations: int = 1,
        *,
        candidates: int = 1,
        ground: bool = True,
        critique: bool = False,
        anchor: bool = True,
        recent: int = RECENT_N,
        min_gain: float = 0.0,
        trust_measured: bool = True,
        cues: bool = False,
        confusion: bool = True,
        label_rules: bool = True,
        gate_replayed: bool = False,
        lean: bool = False,
        min_facts: int = 0,
        n_val: int = 4,
        **kwargs: Any,
    ) -> None:
        check_numbers(
            whole={"iterations": iterations, "candidates": candidates, "recent": recent, "min_facts": min_facts},
            real={"min_gain": min_gain},
        )
        super().__init__(n_recent, n_val=n_val, **kwargs)
        if iterations < 1:
            raise ConfigurationError(f"iterations must be >= 1 (got {iterations})")
        if candidates < 1:
            raise ConfigurationError(f"candidates must be >= 1 (got {candidates})")
        self.iterations, self.candidates, self.ground, self.critique = iterations, candidates, ground, critique
        if recent < 0:
            raise ConfigurationError(f"recent must be >= 0 (got {recent})")
        self.min_gain, self.anchor, self.recent, self.trust_measured = min_gain, anchor, recent, trust_measured
        self.cues, self.label_rules, self.gate_replayed = cues, label_rules, bool(gate_replayed)
        self.confusion = bool(confusion)
        self.lean = bool(lean)
        if min_facts < 0:
            raise ConfigurationError(f"min_facts must be >= 0 (got {min_facts})")
        self.min_facts = min_facts

    @property
    def params(self) -> dict[str, Any]:
        return {
            **super().params,
            "iterations": self.iterations,
            "candidates": self.candidates,
            "ground": self.ground,
            "critique": self.critique,
            "anchor": self.anchor,
            "recent": self.recent,
            "min_gain": self.min_gain,
            "trust_measured": self.trust_measured,
            "cues": self.cues,
            "confusion": self.confusion,
            "label_rules": self.label_rules,
            "gate_replayed": self.gate_replayed,
            "lean": self.lean,
            "min_facts": self.min_facts,
        }

    # -- grounding ---------------------------------------------------------------------------------
    def windows(self, items: list[Interaction]) -> tuple[int, int]:
        """``(n_recent, n_val)``, narrowed for a short history so that the facts keep ``min_facts``
        interactions strictly before the replayed and gated ones (the facts are the persona's grounding;
        with a 7-item past the default windows leave none). The widest window that still leaves them
        is taken: the ``w`` latest interactions (``w >= 2``), about half of them gated, each side within
        its configured size. A history where no window leaves ``min_facts`` (too short, or every earlier
        interaction shares the window's timestamp) keeps the configured pair. ``min_facts=0``,
        ``ground=False`` or a task with no facts to measure (free text): the configured pair, always.

        ``items`` is the compile's trainset, while the facts are measured on the agent's memory: the same
        interactions when the compile goes through ``align_user`` or the fleet; ``min_facts`` counts
        interactions, and an unparsable answer among them measures nothing."""
        r, v = self.n_recent, self.n_val
        if not self.min_facts or not self.ground or not items or get_task(items[-1].task).kind not in FACT_KINDS:
            return r, v

        def facts_left(w: int) -> int:  # items strictly earlier than the window's first (facts' own cut)
            if w > len(items):
                return -1
            cut = items[len(items) - w].timestamp
            return sum(it.timestamp < cut for it in items)

        if facts_left(r + v) >= self.min_facts:
            return r, v
        for w in range(min(r + v, len(items)) - 1, 1, -1):
            if facts_left(w) >= self.min_facts:
                replayed = min(r, w - min(v, w // 2))
                return replayed, min(v, w - replayed)
        return r, v

    def _history(self, agent: PersonaAgent) -> list[Interaction]:
        """The user's stored interactions when the facts are used (``ground``); empty otherwise."""
        if not self.ground or agent.memory is None:
            return []
        try:
            history = list(agent.memory.history(agent.user_id))
        except UnknownUserError:
            return []
        mine = [it for it in history if it.task == agent.task.name]
        return mine or history  # a user of two tasks: the facts of this one (none of it: the history as given)

    def facts(
        self,
        agent: PersonaAgent,
        train: list[Interaction],
        val_ids: list[str],
        history: list[Interaction] | None = None,
        looks: dict[str, str] | None = None,
    ) -> UserFacts:
        """The user's facts from interactions strictly before every replayed and gated one."""
        history = self._history(agent) if history is None else history
        if not history:
            return UserFacts(kind=agent.task.kind, n=0)
        window = {it.id for it in train} | set(val_ids)
        cut = min([it.timestamp for it in history if it.id in window] + [it.timestamp for it in train])
        return self._measure(agent, [it for it in history if it.timestamp < cut], looks)

    def _looks(self, agent: PersonaAgent) -> dict[str, str] | None:
        """With ``confusion``, the label each of a label task's stored texts looks like (``apparent_labels``:
        the memory's embedder, no LM call); ``None`` otherwise."""
        if self.confusion and agent.task.kind == "label" and agent.memory is not None:
            return apparent_labels(agent.memory, agent.user_id, agent.task.labels)
        return None

    def _measure(
        self, agent: PersonaAgent, history: list[Interaction], looks: dict[str, str] | None = None
    ) -> UserFacts:
        """``measure`` with this optimizer's options (``looks``: ``_looks``, read here when not given)."""
        if looks is None and history:
            looks = self._looks(agent)
        return measure(agent.task, history, self.recent, cues=self.cues, looks=looks)

    # -- the loop ----------------------------------------------------------------------------------
    def _align(self, agent: PersonaAgent, train: list[Interaction], budget: Budget, result: CompileResult) -> str:
        from persona_dspy.lm.textgrad_engine import DSPyEngine
        from persona_dspy.optimizers import textgrad_ops as ops

        base, _, guidance_text = prompts.decompose(agent.persona)
        facts = self.facts(agent, train, result.val_ids)
        facts_text = facts.text()

        def persona_of(guidance: str) -> str:
            guidance = "" if guidance == prompts.NO_GUIDANCE else guidance
            return prompts.compose(base, self._shown(facts, guidance), guidance)

        engine = DSPyEngine()
        # the ratings behind the anchor, against which a replay's errors are weighed
        prior = facts.recent_n if self.anchor and self.recent and facts.kind == "rating" else 0
        measured = guidance_text in ("", prompts.NO_GUIDANCE)  # no guidance yet: only facts will be stated
        if self.anchor and facts.anchor() and measured:
            guidance_text = facts.anchor()  # the measured starting point: the user's typical answer
        elif self.anchor and facts.kind == "rating" and facts.typical and anchor_value(guidance_text) is not None:
            guidance_text = with_anchor(guidance_text, facts.typical)  # a recompile starts from today's measure
        elif self.anchor:
            guidance_text = with_label_anchor(guidance_text, facts)  # ... from today's label habit too
        # an earlier compile's guidance is LM text, unless it is exactly what today's facts state
        measured = measured or (self.anchor and guidance_text == facts.anchor())
        result.rewritten = (False if facts.n else None) if measured else True
        guidance = ops.GuidanceVariable(guidance_text or prompts.NO_GUIDANCE)
        constraints = [
            (
                f"Start with '{prompts.GUIDANCE_START}'. One to three short sentences, at most {MAX_GUIDANCE_CHARS} "
                "characters, telling the assistant how to answer for this user."
            ),
            "Only say what the measured errors and the facts support; never contradict them.",
            f"Facts measured from the user's past answers: {facts_text or '(none)'}",
            f"Keep the task's output contract: {agent.task.contract()}",
        ]
        optimizer = ops.tgd_optimizer(guidance, engine, constraints)
        usual = facts.labels[0][0] if facts.labels else None  # no label rule from the user's own habit
        loss_fn = ops.PreferenceLoss(
            engine,
            agent.task,
            facts=facts_text,
            critique=self.critique,
            label_rules=self.label_rules,
            usual=usual,
        )
        agent.persona = persona_of(guidance.value)
        score, preds = self.replay(agent, train, budget, "replay")
        bar = tqdm(range(self.iterations), desc=f"align {agent.user_id}", disable=not self.progress, leave=False)
        for i in bar:
            step = Step(iteration=i + 1, persona=persona_of(guidance.value), train_score=score, predictions=preds)
            result.steps.append(step)
            bar.set_postfix(score=f"{score:.2f}")
            if score >= 1.0 - SCORE_TOLERANCE:
                result.stopped = f"every replayed answer matched the user (iteration {i + 1})"
                break
            cases = [ops.replay_case(agent.task, it, p) for it, p in zip(train, preds)]
            if not self.critique and ops.no_step(cases, agent.task, prior, usual=usual, label_rules=self.label_rules):
                result.stopped = (
                    f"every miss of the replay is an exception to the user's most frequent label or an invalid "
                    f"answer: no rule to state, no step to take (iteration {i + 1})"
                    if facts.kind == "label"
                    else f"the replay's errors, weighed against the {prior} ratings behind the anchor, move it by less "
                    f"than {ops.MIN_SHIFT}: no step to take (iteration {i + 1})"
                    if prior
                    else f"the replay's errors cancel out: no step to take (iteration {i + 1})"
                )
                break
            budget.reserve(self.candidates + int(self.critique), f"iteration {i + 1} loss and rewrite")
            optimizer.zero_grad()
            loss = loss_fn(ops.Replay()(guidance, cases, agent.task), cases, anchor_value(guidance.value), prior)
            step.loss = loss.value
            loss.backward(engine)
            best = None
            for text in self._rewrites(optimizer, guidance, engine, train, facts, step):
                agent.persona = persona_of(text)
                s, p = self.replay(agent, train, budget, f"iteration {i + 1} candidate")
                step.candidate_scores.append(s)
                if best is None or s > best[0] + SCORE_TOLERANCE:
                    best = (s, text, p)
            if best is None:
                result.stopped = f"no usable rewrite in iteration {i + 1} ({step.rejected or 'unchanged'})"
                break
            step.updated_persona = persona_of(best[1])
            if best[0] <= score + SCORE_TOLERANCE:
                result.stopped = (
                    f"no rewrite replayed better than the current persona in iteration {i + 1} "
                    f"({best[0]:.3f} vs {score:.3f})"
                )
                break
            score, preds = best[0], best[2]
            guidance.set_value(best[1])
            result.rewritten = True
        else:
            result.stopped = f"{self.iterations} iteration(s) done"
        if result.windows is not None:
            result.stopped += (
                f"; a short history: {len(train)} replayed and {len(result.val_ids)} gated (not "
                f"{self.n_recent} and {self.n_val}), so the facts keep {facts.n}"
            )
        return persona_of(guidance.value)

    def _shown(self, facts: UserFacts, guidance: str) -> str:
        """The facts the persona states besides its guidance: all of them; with ``lean``, none when the
        guidance states the user's typical answer (the anchor: the number or habit to copy, and the facets
        that go higher or lower). The facts still bound the loss, the rewrite and its rejection; the prompts
        of every replay, gate and answer get shorter."""
        states = STATED_ANCHOR.search(guidance) is not None or LABEL_ANCHOR.search(guidance) is not None
        return "" if self.lean and states else facts.text()

    def _rewrites(
        self, optimizer: Any, guidance: Any, engine: Any, train: list[Interaction], facts: UserFacts, step: Step
    ) -> list[str]:
        """Up to ``candidates`` usable, distinct rewrites of the guidance (TGD steps at temperature 0,
        then sampled). Unparsable or over-long output is retried once; a rewrite contradicting the facts
        is rejected (``step.rejected``). Raises ``LMOutputError`` when no attempt was even parsable."""
        previous, parsed = guidance.value, 0
        out: list[str] = []
        for attempt in range(self.candidates + 1):
            if len(out) == self.candidates or (attempt == self.candidates and parsed):
                break
            optimizer.engine = engine if attempt == 0 else type(engine)(temperature=0.7, rollout_id=attempt)
            try:
                optimizer.step()
            except IndexError:  # no <IMPROVED_VARIABLE> tag in the answer
                guidance.set_value(previous)
                continue
            finally:
                optimizer.engine = engine
            text = guidance.value.strip().strip("{}\"'` \n")
            text = text if facts.kind == "label" else self._redact(text, train)
            guidance.set_value(previous)
            if not 10 <= len(text) <= MAX_GUIDANCE_CHARS:
                continue
            parsed += 1
            problems = contradictions(text, facts)
            if problems:
                step.rejected.append(f"{text[:80]!r}: {problems[0]}")
            elif text != previous and text not in out:
                out.append(text)
        if not parsed:
            raise LMOutputError(
                "the LM's guidance rewrite was unusable twice (missing <IMPROVED_VARIABLE> tags, "
                f"empty, or over {MAX_GUIDANCE_CHARS} characters); production was not moved. "
                "Try a stronger LM for alignment (PERSONA_DSPY_LM)."
            )
        return out

    def _finalize(self, agent: PersonaAgent, train: list[Interaction], result: CompileResult) -> str:
        """Re-ground the promoted persona on everything the user did up to the compile.

        The gated persona's facts stop before the replayed and gated interactions, so that the gate
        scores it on answers it has not seen. Once promoted, those interactions are simply the user's
        latest past, and the most telling one for a drifting user, so the facts are measured again
        over the whole history and the guidance's typical answer follows the recent median, keeping the
        step the alignment took from the first measurement (``typical_new + (stated - typical_old)``). A
        label task's anchor follows today's habit the same way (``with_label_anchor``; removed if there is
        none), with or without ``recent``.
        """
        history = self._history(agent) if self.recent or agent.task.kind == "label" else []
        if not history:
            return agent.persona
        base, _, guidance = prompts.decompose(agent.persona)
        looks = self._looks(agent)  # read once for both measures
        old = self.facts(agent, train, result.val_ids, history, looks)  # what the gated persona was measured on
        end = max(it.timestamp for it in train)
        new = self._measure(agent, [it for it in history if it.timestamp <= end], looks)
        if not new.n or new.n == old.n:
            return agent.persona
        stated = anchor_value(guidance)
        if new.kind == "rating" and stated is not None and old.typical is not None and new.typical is not None:
            moved = agent.task.parse(f"{float(new.typical) + stated - float(old.typical):.3f}")
            if moved is not None:
                guidance = with_anchor(guidance, moved)
        guidance = with_label_anchor(guidance, new)
        text = prompts.compose(base, self._shown(new, guidance), guidance)
        result.reason += f"; promoted re-grounded on {new.n} past interactions (facts had {old.n})"
        return text

    # -- the gate ----------------------------------------------------------------------------------
    def _gate_set(
        self, agent: PersonaAgent, train: list[Interaction], val: list[Interaction], result: CompileResult
    ) -> tuple[list[Interaction], dict[str, str | None]]:
        """With ``gate_replayed``, a candidate of measured facts alone is gated on the replayed interactions
        too: its facts stop before them and no rewrite was taken from them, so they are held out for it, and
        they are the user's latest, the most like the next. Its replay answers are reused (only production
        is replayed on them).

        Caveats: the candidate reaches the gate as facts alone partly because of how it replayed (no step,
        every answer matched, or no rewrite replayed better), so the replayed items lean its way a little; and
        a production persona learned elsewhere on these same interactions (a GEPA instruction) is carried in
        the candidate's base text, which the facts do not bound."""
        last = result.steps[-1] if result.steps else None
        if not self.gate_replayed or result.rewritten is not False or last is None or last.persona != agent.persona:
            return val, {}
        held = {it.id for it in val}
        items = sorted(val + [it for it in train if it.id not in held], key=lambda it: (it.timestamp, it.id))
        return items, {it.id: p for it, p in zip(train, last.predictions) if it.id not in held}

    def _decide(
        self,
        agent: PersonaAgent,
        val: list[Interaction],
        production: list[str | None],
        candidate: list[str | None],
        result: CompileResult,
    ) -> None:
        """Promote only with evidence: higher mean score by more than ``min_gain`` AND more wins than
        losses on the held-back interactions (a tie on every item is not evidence). With
        ``trust_measured`` (the default), a candidate of measured facts alone brings its evidence (the
        ratings behind it) and is promoted unless it scores lower or loses more than it wins."""
        assert result.val_score_candidate is not None and result.val_score_production is not None
        score = agent.task.score
        diffs = [score(c, it.output) - score(p, it.output) for c, p, it in zip(candidate, production, val)]
        wins, losses = sum(d > SCORE_TOLERANCE for d in diffs), sum(d < -SCORE_TOLERANCE for d in diffs)
        gain = result.val_score_candidate - result.val_score_production
        result.promoted, rule = self.promotes(gain, wins, losses, measured=result.rewritten is False)
        result.reason = (
            f"candidate {result.val_score_candidate:.3f} vs production {result.val_score_production:.3f} "
            f"on {len(val)} held-back interactions ({wins} better, {losses} worse; {rule})"
        )

    def promotes(self, gain: float, wins: int, losses: int, *, measured: bool) -> tuple[bool, str]:
        """The gate's rule on the held-back interactions (mean score gain, items better and worse):
        whether it promotes, and the rule in words. ``measured``: the candidate states only facts."""
        if self.trust_measured and measured:
            rule = "a candidate of measured facts alone: promotion needs no lower score and no more worse than better"
            return gain >= -SCORE_TOLERANCE and wins >= losses, rule
        rule = f"promotion needs a gain > {self.min_gain:g} and more better than worse"
        return gain > self.min_gain + SCORE_TOLERANCE and wins > losses, rule

    @staticmethod
    def _redact(text: str, train: list[Interaction]) -> str:
        """A persona must generalize, not store answers: long replayed answers are cut out of it."""
        for it in train:
            if len(it.output) >= MIN_LEAK_CHARS and it.output in text:
                text = text.replace(it.output, "[...]")
        return text

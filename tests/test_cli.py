"""Every subcommand, given bad values, answers with one line on stderr and an exit code: never a traceback.

Values are checked before any work starts (no store is opened, no file is written).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from persona_dspy.cli import main
from persona_dspy.errors import EXIT_CODES, ConfigurationError, PersonaNotFoundError

BAD = ConfigurationError.exit_code


def run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse exits from inside parse_args
        code = exc.code
    return code, capsys.readouterr().err


@pytest.fixture
def data_file(tmp_path) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("")
    return path


BAD_ARGUMENTS = {
    "no command": [],
    "unknown command": ["train"],
    "compile --n-recent 0": ["compile", "--n-recent", "0"],
    "compile --n-recent -1": ["compile", "--n-recent", "-1"],
    "compile --iterations 0": ["compile", "--iterations", "0"],
    "compile --n-val -1": ["compile", "--n-val", "-1"],
    "compile --workers 0": ["compile", "--workers", "0"],
    "compile --candidates 0": ["compile", "--candidates", "0"],
    "compile --max-lm-calls abc": ["compile", "--max-lm-calls", "abc"],
    "compile --backend spark": ["compile", "--backend", "spark"],
    "observe --timestamp nan": ["observe", "u", "--input", "x", "--output", "4.0", "--timestamp", "nan"],
    "observe --timestamp inf": ["observe", "u", "--input", "x", "--output", "4.0", "--timestamp", "inf"],
    "ask with an empty task text": ["ask", "u", "  "],
    "ask with a task text over the limit": ["ask", "u", "x" * 20_001],
    "memory migrate MISSING": ["memory", "migrate", "{tmp}/missing"],
    "memory migrate FILE": ["memory", "migrate", "{data}"],
    "compile --users ''": ["compile", "--users", ""],
    "compile --users ,,": ["compile", "--users", ",,"],
    "demo --users 0": ["demo", "--users", "0"],
    "demo --n-recent 0": ["demo", "--n-recent", "0"],
    "demo --iterations -2": ["demo", "--iterations", "-2"],
    "evaluate without --data": ["evaluate", "--method", "icl"],
    "evaluate --data DIR": ["evaluate", "--data", "{tmp}", "--method", "icl"],
    "evaluate --data MISSING": ["evaluate", "--data", "{tmp}/missing.jsonl", "--method", "icl"],
    "evaluate --method bogus": ["evaluate", "--data", "{data}", "--method", "bogus", "--state-dir", "{tmp}"],
    "evaluate --out DIR": ["evaluate", "--data", "{data}", "--method", "icl", "--out", "{tmp}"],
    "evaluate --out in a missing folder": [
        "evaluate",
        "--data",
        "{data}",
        "--method",
        "icl",
        "--out",
        "{tmp}/nowhere/out.json",
    ],
    "evaluate --k 0": ["evaluate", "--data", "{data}", "--method", "icl", "--k", "0"],
    "evaluate --n-val -1": ["evaluate", "--data", "{data}", "--method", "persona+align", "--n-val", "-1"],
    "ingest DIR": ["ingest", "{tmp}"],
    "ingest MISSING": ["ingest", "{tmp}/missing.jsonl"],
    "rollback --to 0": ["rollback", "u", "--to", "0"],
    "rollback --to beyond 64 bits": ["rollback", "u", "--to", "9" * 23],
    "forget a blank user": ["forget", "  "],
    "history --state-dir empty": ["personas", "history", "u", "--state-dir", ""],
    "compile --max-age infinite": ["compile", "--due", "--max-age", "1e400"],
    "compile --realign-after without --due": ["compile", "--realign-after", "3"],
    "compile --max-age without --due": ["compile", "--max-age", "60"],
    "runs compare --user blank": ["runs", "compare", "--user", "  "],
    "personas without its command": ["personas"],
    "personas history of an empty user id": ["personas", "history", ""],
    "rollback without a user": ["rollback"],
    "personas history without a user": ["personas", "history"],
    "personas unknown": ["personas", "list"],
    "runs compare --bogus": ["runs", "compare", "--bogus"],
    "forget without a user": ["forget"],
    "sync with an extra argument": ["sync", "now"],
    "memory migrate without a folder": ["memory", "migrate"],
    "observe --file of no interactions": ["observe", "--file", "{data}"],
    "observe --file with --id": ["observe", "--file", "{data}", "--id", "x"],
    "compile --due on a state dir that does not exist": ["compile", "--due", "--state-dir", "{tmp}/nowhere"],
}


@pytest.mark.parametrize("argv", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_a_bad_argument_is_one_line_and_exit_code_2(argv, tmp_path, data_file, capsys):
    argv = [a.format(tmp=tmp_path, data=data_file) for a in argv]
    code, err = run(argv, capsys)
    assert code == BAD, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("persona-dspy: ConfigurationError: ")
    assert not (tmp_path / "qdrant").exists() and not (tmp_path / "mlflow.db").exists()  # no work started


@pytest.mark.parametrize(
    "variable, value",
    [
        ("PERSONA_DSPY_LM_TEMPERATURE", "hot"),
        ("PERSONA_DSPY_EMBEDDED_CTX", "-"),
        ("PERSONA_DSPY_LM_MAX_TOKENS", "lots"),
        ("PERSONA_DSPY_LM_MAX_TOKENS", "-5"),
        ("PERSONA_DSPY_LM_NUM_RETRIES", "-1"),
        ("PERSONA_DSPY_LM", ""),
        ("PERSONA_DSPY_MLFLOW_TRACKING_URI", "bogus://x"),
    ],
)
@pytest.mark.parametrize(
    "command",
    [
        ["sync"],
        ["personas", "history", "u"],
        ["runs", "compare"],
        ["rollback", "u"],
        ["forget", "u"],
        ["compile"],
        ["demo"],
        ["ingest", "{data}"],
        ["evaluate", "--data", "{data}", "--method", "icl"],
    ],
)
def test_a_bad_environment_setting_is_one_line_naming_the_variable(
    command, variable, value, tmp_path, data_file, monkeypatch, capsys
):
    monkeypatch.setenv(variable, value)
    code, err = run([a.format(data=data_file) for a in command] + ["--state-dir", str(tmp_path)], capsys)
    assert code == BAD and len(err.strip().splitlines()) == 1, err
    assert variable in err and repr(value) in err


def test_a_persona_dspy_error_is_one_line_with_its_own_exit_code(tmp_path, capsys, seed_store):
    seed_store(tmp_path)
    code, err = run(["rollback", "nobody", "--state-dir", str(tmp_path)], capsys)
    assert code == PersonaNotFoundError.exit_code == EXIT_CODES["PersonaNotFoundError"]
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_exit_codes_are_distinct_per_error_class():
    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES)


def test_the_installed_entry_point_prints_no_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "persona_dspy.cli", "compile", "--n-recent", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == BAD
    assert done.stderr.strip().splitlines() == [
        "persona-dspy: ConfigurationError: persona-dspy compile: argument --n-recent: must be >= 1, got 0 (see --help)"
    ]


def compile_optimizer(tmp_path, monkeypatch, flags: list[str]):
    """The optimizer ``persona-dspy compile <flags>`` builds (the fleet is stopped before it runs)."""
    import persona_dspy.fleet

    seen = []

    def capture(users, optimizer, **kwargs):
        seen.append(optimizer)
        raise ConfigurationError("stop here: only the optimizer is checked")

    monkeypatch.setattr(persona_dspy.fleet, "compile_users", capture)
    code = main(["compile", "--users", "u1", "--state-dir", str(tmp_path), *flags])
    assert code == ConfigurationError.exit_code and len(seen) == 1
    return seen[0]


@pytest.mark.parametrize("flag, trusted", [([], True), (["--trust-measured"], True), (["--no-trust-measured"], False)])
def test_compile_passes_trust_measured_to_the_optimizer(tmp_path, monkeypatch, flag, trusted):
    optimizer = compile_optimizer(tmp_path, monkeypatch, flag)
    assert optimizer.trust_measured is trusted and optimizer.params["trust_measured"] is trusted


@pytest.mark.parametrize("flag, on", [([], True), (["--no-confusion"], False)])
def test_compile_passes_confusion_to_the_optimizer(tmp_path, monkeypatch, flag, on):
    optimizer = compile_optimizer(tmp_path, monkeypatch, flag)
    assert optimizer.confusion is on and optimizer.params["confusion"] is on


@pytest.mark.parametrize("flag, expected", [([], 0), (["--min-facts", "3"], 3)])
def test_compile_passes_min_facts_to_the_optimizer(tmp_path, monkeypatch, flag, expected):
    optimizer = compile_optimizer(tmp_path, monkeypatch, flag)
    assert optimizer.min_facts == expected == optimizer.params["min_facts"]


def test_a_negative_min_facts_is_a_one_line_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compile", "--users", "u1", "--state-dir", str(tmp_path), "--min-facts", "-1"])
    assert exc.value.code == 2 and "min-facts" in capsys.readouterr().err


def test_ask_with_an_unreachable_lm_is_one_lm_output_error_line(tmp_path, monkeypatch, capsys, seed_store):
    seed_store(tmp_path)
    from persona_dspy.tracking.server import free_port

    _ingest_ana(tmp_path)
    monkeypatch.setenv("PERSONA_DSPY_API_BASE", f"http://127.0.0.1:{free_port()}/v1")  # nothing listens
    monkeypatch.setenv("PERSONA_DSPY_API_KEY", "x")
    monkeypatch.setenv("PERSONA_DSPY_LM_NUM_RETRIES", "0")
    capsys.readouterr()
    code, err = run(["ask", "ana", "movie: Heat", "--state-dir", str(tmp_path), "--lm", "openai/any-model"], capsys)
    assert code == EXIT_CODES["LMOutputError"], err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("persona-dspy: LMOutputError: ")
    assert "PERSONA_DSPY_LM" in err and all(line.strip() for line in err.strip().splitlines())


def test_compile_users_are_stripped_and_all_is_every_user():
    from persona_dspy.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["compile", "--users", " ana, cat ,"]).users == ["ana", "cat"]
    assert parse(["compile"]).users == parse(["compile", "--users", "all"]).users == "all"


def test_runs_compare_of_a_missing_experiment_says_so_and_creates_nothing(tmp_path, capsys, seed_store):
    seed_store(tmp_path)
    from persona_dspy import Settings
    from persona_dspy.tracking import Tracking

    code, err = run(["runs", "compare", "--experiment", "no-such-exp", "--state-dir", str(tmp_path)], capsys)
    assert code == BAD and "no experiment 'no-such-exp'" in err and len(err.strip().splitlines()) == 1, err
    assert Tracking(Settings(state_dir=tmp_path), experiment="no-such-exp").store.existing_experiment_id() is None
    assert run(["runs", "compare", "--state-dir", str(tmp_path)], capsys)[0] == 0  # the default one: no runs yet


@pytest.mark.parametrize("command", [["personas", "history", "u"], ["ingest", "{data}"], ["compile"], ["forget", "u"]])
def test_a_state_dir_that_is_a_file_is_one_configuration_error_everywhere(command, tmp_path, data_file, capsys):
    state = tmp_path / "state"
    state.write_text("not a folder")
    code, err = run([a.format(data=data_file) for a in command] + ["--state-dir", str(state)], capsys)
    assert code == BAD and "is a file, not a folder" in err and len(err.strip().splitlines()) == 1, err


def test_a_value_in_exponent_form_is_a_value_and_debug_goes_after_the_command_too(data_file):
    from persona_dspy.cli import build_parser

    args = build_parser().parse_args(["observe", "u", "--input", "x", "--output", "4", "--timestamp", "-1e5"])
    assert args.timestamp == -1e5 and args.debug is False
    assert build_parser().parse_args(["personas", "history", "-2.5e3"]).user == "-2.5e3"
    assert build_parser().parse_args(["ingest", str(data_file), "--debug"]).debug is True
    assert build_parser().parse_args(["--debug", "ingest", str(data_file)]).debug is True
    assert build_parser().parse_args(["memory", "migrate", ".", "--debug"]).debug is True
    for argv in (
        ["personas", "--debug", "history", "u"],
        ["runs", "--debug", "compare"],
        ["memory", "--debug", "migrate", "."],
    ):
        assert build_parser().parse_args(argv).debug is True, argv
    assert build_parser().parse_args(["personas", "history", "u"]).debug is False


def test_version_and_a_missing_command_named_as_the_help_names_it(capsys):
    import persona_dspy

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"persona-dspy {persona_dspy.__version__}"
    code, err = run(["runs"], capsys)
    assert code == BAD and "required: COMMAND" in err and "runs_command" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["personas", "history", "u"],
        ["personas", "export", "u"],
        ["rollback", "u"],
        ["forget", "u"],
        ["runs", "compare"],
    ],
    ids=["history", "export", "rollback", "forget", "runs compare"],
)
def test_a_read_of_a_state_dir_that_does_not_exist_creates_nothing_and_says_so(argv, tmp_path, capsys):
    """A misspelled --state-dir: not an empty registry created there and "no persona versions"."""
    missing = tmp_path / "stat-dir"
    code, err = run([*argv, "--state-dir", str(missing)], capsys)
    assert code == BAD and "does not exist" in err and str(missing) in err and len(err.strip().splitlines()) == 1
    assert not missing.exists()


def test_forget_on_a_missing_state_dir_with_an_empty_qdrant_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "nope"
    code, err = run(["forget", "u", "--qdrant", ":memory:", "--state-dir", str(missing)], capsys)
    assert code == BAD and "does not exist" in err and not missing.exists()


def _record_with_agent(tmp_path, user: str, agent: dict[str, str]) -> int:
    """Record a promoted compile of ``user`` gated with the agent ``settings`` (a real sqlite store)."""
    from persona_dspy.config import Settings
    from persona_dspy.results import CompileResult
    from persona_dspy.signatures import DEFAULT_PERSONA
    from persona_dspy.tracking import Tracking

    result = CompileResult(
        user_id=user,
        task="movielens_rating",
        params={},
        agent=agent,
        initial_persona=DEFAULT_PERSONA,
        candidate_persona="Rates films harshly.",
        production_persona=DEFAULT_PERSONA,
        promoted=True,
    )
    return Tracking(Settings(state_dir=tmp_path)).record(result)


def _ingest_ana(tmp_path) -> None:
    data = tmp_path / "ana.jsonl"
    data.write_text(
        "".join(
            f'{{"user_id": "ana", "id": "a{i}", "input": "movie: Film {i}", "output": "4.0", "timestamp": {i}, '
            '"task": "movielens_rating"}\n'
            for i in range(4)
        )
    )
    assert main(["ingest", str(data), "--state-dir", str(tmp_path)]) == 0


def test_ask_serves_a_react_persona_in_react_mode(tmp_path, monkeypatch, capsys, seed_store):
    import json

    import persona_dspy.lm as lm_module
    from persona_dspy.lm.scripted import ScriptedLM

    from scripted import react_rule

    seed_store(tmp_path)
    _ingest_ana(tmp_path)
    settings = {"adapter": "chat", "mode": "react", "k": "4", "episode_chars": "220", "actions": "", "max_iters": "3"}
    _record_with_agent(tmp_path, "ana", settings)
    lm = ScriptedLM(react_rule("recent_interactions", {}, lambda system: "2.0"))
    monkeypatch.setattr(lm_module, "build_lm", lambda settings: lm)
    capsys.readouterr()
    assert main(["ask", "ana", "movie: Heat", "--state-dir", str(tmp_path), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["answer"] == "2.0" and answer["persona_version"] == 1
    assert "react agent" in answer["evidence"]["profile"]
    assert any("next_tool_name" in str(prompt) for prompt in lm.prompts)  # it answered as a react agent


def test_a_hand_edited_agent_tag_is_a_configuration_error_naming_the_version(tmp_path, capsys, seed_store):
    seed_store(tmp_path)
    _ingest_ana(tmp_path)
    version = _record_with_agent(tmp_path, "ana", {"adapter": "Compact", "mode": "pipeline", "k": "4"})
    code, err = run(["ask", "ana", "movie: Heat", "--state-dir", str(tmp_path)], capsys)
    assert code == EXIT_CODES["ConfigurationError"], err
    last = err.strip().splitlines()[-1]
    assert f"persona version {version} of user 'ana'" in last and "agent.adapter='Compact'" in last
    assert "Traceback" not in err


def test_a_persona_recorded_before_agent_settings_is_served_with_the_settings_of_that_time(
    tmp_path, monkeypatch, seed_store
):
    """A version without ``agent.*`` tags was gated with ``LEGACY_AGENT`` (the defaults then), not with
    whatever ``PersonaAgent``'s defaults are now."""
    from persona_dspy import serving
    from persona_dspy.config import Settings
    from persona_dspy.memory import EpisodicMemory
    from persona_dspy.tracking import Tracking

    seed_store(tmp_path)
    _ingest_ana(tmp_path)
    _record_with_agent(tmp_path, "ana", {})
    monkeypatch.setattr(serving, "LEGACY_AGENT", {**serving.LEGACY_AGENT, "k": "6", "adapter": "compact"})
    settings = Settings(state_dir=tmp_path)
    with EpisodicMemory(settings=settings) as memory:
        agent = serving.load_agent("ana", memory=memory, tracking=Tracking(settings))
        assert (agent.persona_version, agent.k, agent.adapter) == (1, 6, "compact")
        assert serving.load_agent("ana", memory=memory, tracking=Tracking(settings), k=2).k == 2

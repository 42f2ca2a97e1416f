"""The public surface: ``import persona_dspy as pd`` is cheap and gives every public name; errors live in
errors.py; the import graph reads one way (data -> memory -> agent -> optimizers -> tracking -> fleet/cli)."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import persona_dspy as pd
from persona_dspy import errors

PACKAGE = Path(pd.__file__).parent

LAYERS = [
    {"errors", "config", "results", "compat", "redaction", "_values"},
    {"data", "lm"},
    {"signatures"},
    {"memory"},
    {"tools"},
    {"agent"},
    {"optimizers"},
    {"tracking"},
    {"pipeline"},
    {"fleet", "demo", "evaluation"},
    {"serving", "forget"},
    {"export"},
    {"cli"},
    {"__init__"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def test_import_persona_dspy_loads_neither_dspy_nor_the_stores_nor_textgrad():
    code = (
        "import sys, persona_dspy as pd; pd.Settings; pd.ConfigurationError; "
        "print(sorted(m for m in ('dspy', 'mlflow', 'textgrad', 'qdrant_client', 'litellm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.strip() == "[]"


def test_every_public_name_resolves_without_importing_textgrad():
    """One subprocess (an import costs seconds): no public name, nor the LM package, imports textgrad. The
    TextGrad engine, asked for by name, resolves (here, where the optimizer tests import textgrad anyway: a
    second import of it in the subprocess would cost seconds more)."""
    code = (
        "import sys, persona_dspy as pd, persona_dspy.lm as lm; [getattr(pd, n) for n in pd.__all__];"
        " print('textgrad' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    assert out.split() == ["False"]
    from persona_dspy import lm

    assert lm.DSPyEngine.__module__ == "persona_dspy.lm.textgrad_engine"
    assert (
        {
            "PersonaAgent",
            "PersonaOptimizer",
            "EpisodicMemory",
            "SemanticMemory",
            "Tracking",
            "Settings",
            "compile_users",
            "align_user",
        }
        <= set(pd.__all__)
        <= set(dir(pd))
    )


def test_every_persona_dspy_error_is_defined_in_errors_py_and_exported():
    import persona_dspy.evaluation  # the modules that used to define their own errors
    import persona_dspy.fleet  # noqa: F401

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    found = {cls for cls in subclasses(pd.PersonaDSPyError) if cls.__module__.startswith("persona_dspy")}
    assert {cls.__module__ for cls in found} == {"persona_dspy.errors"}
    assert {cls.__name__ for cls in found} | {"PersonaDSPyError"} == set(errors.EXIT_CODES)
    assert all(getattr(pd, name) is getattr(errors, name) for name in errors.EXIT_CODES)
    assert "EXIT_CODES" in inspect.getdoc(errors)


def imports() -> dict[str, set[str]]:
    """module -> persona_dspy modules it imports (anywhere in the file, lazy imports included);
    ``from package import submodule`` counts as importing the submodule."""
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("persona_dspy"):
                subs = {f"{node.module}.{a.name}" for a in node.names} & set(files)
                deps |= subs or {node.module}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("persona_dspy")}
        graph[module] = deps - {module}
    return graph


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_imports_point_down_the_layers():
    upward = [
        (m, d)
        for m, deps in imports().items()
        for d in deps
        if layer(m) != layer(d) and RANK[layer(m)] <= RANK[layer(d)]
    ]
    assert not upward, f"imports against the data flow: {upward}"
    assert set(RANK) >= {layer(m) for m in imports()}, "a new top-level module needs its place in LAYERS"


def test_no_module_imports_itself_back():
    graph = imports()
    cycles, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == "open":
                cycles.append(path[path.index(dep) :] + [dep] if dep in path else [module, dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, f"import cycles: {cycles}"

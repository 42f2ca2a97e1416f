"""Write one ``## section`` of BENCHMARKS.md in place, leaving the other sections as they are."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, heading: str, body: str) -> None:
    """Replace the section that starts with ``heading`` (up to the next ``## ``), or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines()
    try:
        start = lines.index(heading)
    except ValueError:
        new = text.rstrip("\n") + f"\n\n{heading}\n\n{body.strip()}\n"
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        new = "\n".join(lines[:start] + [heading, "", body.strip(), ""] + lines[end:]).rstrip("\n") + "\n"
    path.write_text(new)

"""The generated parts of the docs: docs/SETTINGS.md's settings table, docs/ARCHITECTURE.md's transition table and
Redis key map, docs/ENGINE.md's table of engine options (`make readme` runs `python -m shared.docgen`; tests check
they are current)."""

from __future__ import annotations

from pathlib import Path

from shared.jobstate import transition_table
from shared.keys import key_table
from shared.settings import settings_table


def fill(path: str, marker: str, table: str) -> bool:
    """Rewrites the text between `<!-- marker:start -->` and `<!-- marker:end -->` in `path`; True if it changed."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    text = Path(path).read_text()
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{start}\n{table}\n{end}{tail}"
    if new != text:
        Path(path).write_text(new)
    return new != text


def update(
    settings: str = "docs/SETTINGS.md", architecture: str = "docs/ARCHITECTURE.md", engine: str = "docs/ENGINE.md"
) -> bool:
    """Every generated table; True if any changed."""
    # The engine options' registry is the worker's (torch-free to import); only this dev tool reads it from shared/.
    from worker.options.registry import option_table

    changed = fill(settings, "settings", settings_table())
    changed |= fill(architecture, "transitions", transition_table())
    changed |= fill(engine, "options", option_table())
    return fill(architecture, "keys", key_table()) or changed


if __name__ == "__main__":
    print("updated" if update() else "already current")

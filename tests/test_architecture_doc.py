"""docs/ARCHITECTURE.md shows the state machine's transitions and the Redis key map as the code has them."""

from __future__ import annotations

from pathlib import Path

from shared.jobstate import transition_table
from shared.keys import KEY_MAP, Keys, key_table

DOC = Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md"


def test_the_transition_table_and_key_map_are_current() -> None:
    text = DOC.read_text()
    assert transition_table() in text, "docs/ARCHITECTURE.md's transition table is stale: run `make readme`"
    assert key_table() in text, "docs/ARCHITECTURE.md's key map is stale: run `make readme`"


def test_every_key_wanq_writes_is_in_the_key_map() -> None:
    keys = Keys("p")
    patterns = {pattern.split("/")[0] for pattern, _, _ in KEY_MAP}
    for name in dir(keys):
        if name.startswith("_") or name in ("prefix", "broker_queue"):
            continue
        member = getattr(Keys, name)
        value = (
            getattr(keys, name) if isinstance(member, property) else member(keys, *(["a"] * (member.__code__.co_argcount - 1)))
        )
        head = value.removeprefix("p:").split(":")[0]
        assert any(p.startswith(head) for p in patterns), f"Keys.{name} ({value}) is missing from KEY_MAP"

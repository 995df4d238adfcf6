"""wanq's Redis scripts, one `.lua` file each, loaded once per client (`register_script`, then EVALSHA).

Each file starts with what it does, its KEYS (every key comes from shared/keys.py; no script builds a key
name) and its arguments: one JSON object in ARGV[1]. `lib.lua` is prepended to each: the argument decoding
and the few helpers several scripts share (joining a model's ring, checking the caller's view of the ring).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from redis.commands.core import AsyncScript, Script

HERE = Path(__file__).parent
NAMES = ("transition", "create", "position", "take", "readmit", "claim_due")


@cache
def source(name: str) -> str:
    """The script as Redis runs it: lib.lua, then the file."""
    if name not in NAMES:
        raise KeyError(f"no script {name!r}; scripts: {NAMES}")
    return (HERE / "lib.lua").read_text() + "\n" + (HERE / f"{name}.lua").read_text()


def load(client: Any, name: str) -> Script:
    """The script registered with a blocking client."""
    return client.register_script(source(name))  # type: ignore[no-any-return]


def load_async(client: Any, name: str) -> AsyncScript:
    """The script registered with a redis.asyncio client."""
    return client.register_script(source(name))  # type: ignore[no-any-return]


def argv(**named: Any) -> list[str]:
    """The one ARGV entry every script takes: its named arguments as JSON."""
    return [json.dumps(named)]

"""`wanq submit`'s step cache flags become the request's `cache` field (true, false or settings)."""

from __future__ import annotations

from typing import Any

import pytest

from wanq.cli import build_parser


@pytest.mark.parametrize(
    ("flags", "cache"),
    [
        ([], None),
        (["--cache"], True),
        (["--cache", "on"], True),
        (["--cache", "off"], False),
        (["--no-cache"], False),
        (["--cache", '{"fn": 2}'], {"fn": 2}),
    ],
)
def test_cache_flags(flags: list[str], cache: Any) -> None:
    args = build_parser().parse_args(["submit", "a fox", *flags])
    assert args.cache == cache


def test_a_cache_value_that_is_no_setting_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["submit", "a fox", "--cache", "fast"])
    assert "'fast': say on, off or settings as a JSON object" in capsys.readouterr().err

"""`wanq submit --interpolate/--upscale` become the request's fields; other values are refused by the parser."""

from __future__ import annotations

import pytest

from wanq.cli import build_parser


def test_the_flags_set_the_fields() -> None:
    args = build_parser().parse_args(["submit", "a fox", "--interpolate", "2", "--upscale", "4"])
    assert (args.interpolate, args.upscale) == (2, 4)
    plain = build_parser().parse_args(["submit", "a fox"])
    assert (plain.interpolate, plain.upscale) == (None, None)  # left out of the body: the server's default, 1


def test_other_factors_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["submit", "a fox", "--interpolate", "3"])
    assert "invalid choice: 3" in capsys.readouterr().err

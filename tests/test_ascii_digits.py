"""Numbers read from input are ASCII digits only: `str.isdigit` also takes '²' (then `int` and `float` fail: a crash)
and '١' (then they read it as 1). A webhook receiver's and the API's Retry-After, a request's size."""

from __future__ import annotations

import httpx
import pytest

from shared.errors import InvalidRequest
from shared.specs import parse_size
from shared.webhooks import retry_after_s
from wanq.client import _api_error


@pytest.mark.parametrize("digits", ["\u00b2", "\u0661\u0660", "\uff15"])
def test_retry_after_in_other_digits_is_unreadable_not_a_crash(digits: str) -> None:
    assert retry_after_s(digits) is None
    assert retry_after_s("7") == 7.0
    response = httpx.Response(429, headers={"retry-after": digits.encode()}, json={"error": {"message": "slow down"}})
    assert response.headers["retry-after"] == digits and _api_error(response).retry_after is None


@pytest.mark.parametrize("size", ["\u00b2x64", "\u0666\u0664x\u0666\u0664", "64x\uff16\uff14"])
def test_sizes_in_other_digits_are_refused(size: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_size(size, 16)
    assert refused.value.param == "size" and 'expected "WIDTHxHEIGHT"' in refused.value.message
    assert parse_size("64x48", 16) == (64, 48)

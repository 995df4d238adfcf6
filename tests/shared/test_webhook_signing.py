"""Signatures checked by the reference verifier (the `standardwebhooks` library), and the retry rules."""

from __future__ import annotations

import base64
import json
import time
from email.utils import formatdate

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from shared.errors import InvalidRequest
from shared.webhooks import check_events, event_body, headers, new_secret, next_delay_s, retry_after_s


def test_secrets_are_whsec_base64_of_random_bytes() -> None:
    one, two = new_secret(), new_secret()
    assert one.startswith("whsec_") and one != two
    assert 24 <= len(base64.b64decode(one.removeprefix("whsec_"))) <= 64


def test_the_reference_verifier_accepts_our_signature_and_rejects_tampering() -> None:
    secret = new_secret()
    body = event_body("video.completed", time.time(), {"id": "video_1", "status": "completed"})
    sent = headers([secret], "msg_1", body)
    assert sent["webhook-signature"].startswith("v1,") and " " not in sent["webhook-signature"]
    assert Webhook(secret).verify(body, sent)["data"]["id"] == "video_1"
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"video_1", b"video_2"), sent)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, sent)


def test_during_a_rotation_both_secrets_sign() -> None:
    old, new = new_secret(), new_secret()
    body = b'{"type":"video.started"}'
    sent = headers([new, old], "msg_2", body)
    assert len(sent["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(body, sent)


def test_the_body_has_type_iso_timestamp_and_the_video() -> None:
    body = json.loads(event_body("video.failed", 1_700_000_000.25, {"id": "video_x"}))
    assert body == {"type": "video.failed", "timestamp": "2023-11-14T22:13:20.250Z", "data": {"id": "video_x"}}


def test_unknown_event_names_are_refused_by_name() -> None:
    assert check_events(["video.completed", "video.progress"]) == ["video.completed", "video.progress"]
    with pytest.raises(InvalidRequest, match=r"unknown event 'video\.done'"):
        check_events(["video.done"])


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_s("7") == 7.0
    now = time.time()
    assert retry_after_s(formatdate(now + 60, usegmt=True), now=now) == pytest.approx(60, abs=1)
    assert retry_after_s("soon") is None and retry_after_s(None) is None


def test_the_schedule_ends_and_retry_after_is_a_capped_lower_bound() -> None:
    schedule = [0, 5, 300]
    assert next_delay_s(schedule, 3, jitter=0) is None
    assert next_delay_s(schedule, 1, jitter=0) == 5
    assert 4.5 <= next_delay_s(schedule, 1, jitter=0.1) <= 5.5  # type: ignore[operator]
    assert next_delay_s(schedule, 1, jitter=0, retry_after=60) == 60
    assert next_delay_s(schedule, 1, jitter=0, retry_after=10**9) == 24 * 3600

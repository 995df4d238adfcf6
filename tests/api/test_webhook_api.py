"""Webhook settings through the API, and the SSRF guard on webhook URLs (at submission and at connect time)."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from api.daemons.webhooks import Deliverer
from shared.errors import InvalidRequest
from shared.keys import Keys
from shared.netguard import GuardedBackend, parse_allowlist, resolve_public
from shared.settings import Settings
from shared.webhook_store import Delivery, WebhookStore
from tests.conftest import SMALL
from tests.reliability_report import record
from tests.tenants import SSRF, client, make_key
from tests.webhook_receiver import Receiver
from wanq.stack import Stack, free_port, wait_until

JOB = {"prompt": "ssrf probe", "model": "tiny-t2v-a14b", **SMALL}


@pytest.fixture(scope="module")
def strict_api(stack: Stack) -> Iterator[httpx.Client]:
    """A second API process of the same stack with no webhook allowlist, as in production."""
    port = free_port()
    process = stack.spawn(
        f"api-strict-{port}",
        [sys.executable, "-m", "wanq", "api", "--host", "127.0.0.1", "--port", str(port)],
        {"WANQ_WEBHOOKS_ALLOWLIST": "[]"},
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: stack._healthy(url), 60, "the strict API")
    try:
        with httpx.Client(base_url=url, timeout=30, headers=stack.admin_headers()) as client:
            yield client
    finally:
        process.stop()
        stack.processes.remove(process)


@pytest.fixture
def tenant(api: httpx.Client, stack: Stack) -> Iterator[tuple[str, httpx.Client]]:
    """A tenant of its own for a test that reads or changes per-tenant webhook state (secret, endpoint):
    the stack's admin tenant is shared by every test, so its state depends on what ran before."""
    name = f"hooks-{uuid.uuid4().hex[:10]}"
    with client(stack, make_key(api, name)) as http:
        yield name, http


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    receiver = Receiver(tmp_path_factory.mktemp("receiver-api"))
    yield receiver
    receiver.stop()


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://10.0.0.1/hook", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::1]:8080/hook", "loopback"),
        ("http://localhost:8080/hook", "loopback"),  # a name resolving to a non-public address
        ("http://192.168.1.20/hook", "private"),
        ("http://100.64.0.1/hook", "private"),  # shared address space (carrier-grade NAT)
        ("http://224.0.0.1/hook", "multicast"),
        ("http://[fc00::1]/hook", "private"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://[::ffff:10.0.0.1]/hook", "private"),
        ("http://0.0.0.0/hook", "0.0.0.0"),
        ("ftp://example.com/hook", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
    ],
)
def test_unsafe_webhook_urls_are_refused_at_submission(strict_api: httpx.Client, url: str, why: str) -> None:
    response = strict_api.post("/v1/videos", json={**JOB, "webhook_url": url})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "webhook_url" and why in error["message"], error


# Addresses on the deny list, each written in every form below: the guard must see through all of them.
DENIED_IPV4 = [
    "127.0.0.1", "127.255.255.254", "0.0.0.0", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254",
    "100.64.0.1", "224.0.0.1", "240.0.0.1", "255.255.255.255", "198.18.0.1", "192.0.2.1",
]  # fmt: skip
PUBLIC_TEREDO_SERVER = "65.54.227.120"
IPV6_AND_NAMES = [
    "[::1]", "[0:0:0:0:0:0:0:1]", "[::]", "[fc00::1]", "[fd12:3456::1]", "[fe80::1]", "[ff02::1]", "[fec0::1]",
    "[100::1]", "[2001:db8::1]", "localhost", "localhost.", "127.0.0.1.",
]  # fmt: skip


def ipv4_hosts(address: str) -> list[str]:
    """URL hosts that reach one IPv4 address: the spellings inet_aton accepts, and the IPv6 forms that embed it."""
    ip = ipaddress.IPv4Address(address)
    n, octets = int(ip), ip.packed
    high, low = f"{n >> 16:x}", f"{n & 0xFFFF:x}"
    server = int(ipaddress.IPv4Address(PUBLIC_TEREDO_SERVER))
    client = n ^ 0xFFFFFFFF  # Teredo stores its client's address inverted
    return [
        address,
        str(n),  # one decimal number
        hex(n),
        ".".join(f"0{b:o}" for b in octets),  # octal parts
        ".".join(hex(b) for b in octets),
        f"{octets[0]}.{n & 0xFFFFFF}",  # two parts
        f"[::ffff:{address}]",  # IPv4-mapped
        f"[::ffff:{high}:{low}]",
        f"[::{address}]",  # IPv4-compatible (deprecated)
        f"[64:ff9b::{address}]",  # NAT64, well-known prefix
        f"[64:ff9b:1::{high}:{low}]",  # NAT64, local-use prefix
        f"[2002:{high}:{low}::]",  # 6to4
        f"[2002:{high}:{low}:1::1]",
        f"[2001:0:{server >> 16:x}:{server & 0xFFFF:x}::{client >> 16:x}:{client & 0xFFFF:x}]",  # Teredo client
        f"[2001:0:{high}:{low}::1]",  # Teredo server
    ]


SSRF_URLS = [
    *(f"http://{host}/hook" for address in DENIED_IPV4 for host in ipv4_hosts(address)),
    *(f"http://{host}:8080/hook" for host in IPV6_AND_NAMES),
    "http://example.com@127.0.0.1/hook",  # user info before the real host
    "http://127.0.0.1:80@example.com/hook",  # the other way round: example.com is the host, and does not resolve here
    "https://169.254.169.254:443/latest/meta-data/",
    *(f"{scheme}://example.com/hook" for scheme in ("ftp", "file", "gopher", "dict", "ws", "redis")),
    "file:///etc/passwd",
    "http:///hook",
    "http://[::1/hook",
]


def test_every_ssrf_form_is_refused_with_a_400(strict_api: httpx.Client, api: httpx.Client) -> None:
    """Each form as a job's webhook_url and as the tenant's endpoint: a 400 naming the field, never a 5xx. The tenant
    has a signing secret, so a form that got through would be accepted (202, 200), not refused for another reason."""
    headers = {"Authorization": f"Bearer {make_key(api, SSRF)}"}
    with httpx.Client(base_url=strict_api.base_url, headers=headers, timeout=30) as http:
        assert http.post("/v1/webhook_endpoint/rotate_secret").status_code == 200
        statuses: dict[str, list[int]] = {}
        for url in SSRF_URLS:
            job = http.post("/v1/videos", json={**JOB, "webhook_url": url, "webhook_events": []})
            endpoint = http.put("/v1/webhook_endpoint", json={"url": url})
            statuses[url] = [job.status_code, endpoint.status_code]
            if job.status_code == 400:
                assert job.json()["error"]["param"] == "webhook_url", (url, job.text)
            if endpoint.status_code == 400:
                assert endpoint.json()["error"]["param"] == "url", (url, endpoint.text)
    codes = [code for pair in statuses.values() for code in pair]
    record(
        "hostile_input",
        {
            "ssrf_forms": len(SSRF_URLS),
            "ssrf_requests": len(codes),  # each form as a job's webhook_url and as the tenant's endpoint
            "ssrf_refused": sum(pair == [400, 400] for pair in statuses.values()),  # forms refused both ways
            "ssrf_5xx": sum(code >= 500 for code in codes),
        },
    )
    assert len(SSRF_URLS) >= 200
    admitted = {url: pair for url, pair in statuses.items() if pair != [400, 400]}
    assert not admitted, admitted


def test_ipv4_inside_ipv6_is_checked_but_a_public_one_passes() -> None:
    for url in ("http://[2002:7f00:1::]/", "http://[64:ff9b:1::a00:1]/", "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/"):
        with pytest.raises(InvalidRequest, match="embedding"):
            resolve_public(url)
    for url in ("http://[2002:808:808::1]/", "http://[64:ff9b::8.8.8.8]/", "http://[::ffff:8.8.8.8]/"):
        assert resolve_public(url)[2]  # 6to4 of a public host; NAT64 on an IPv6-only network


def test_the_tenant_endpoint_is_checked_the_same_way(strict_api: httpx.Client) -> None:
    response = strict_api.put("/v1/webhook_endpoint", json={"url": "http://169.254.169.254/"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "url"
    assert "link-local" in response.json()["error"]["message"]


def test_the_allowlist_admits_only_what_it_names(tenant: tuple[str, httpx.Client]) -> None:
    _, http = tenant
    assert http.post("/v1/webhook_endpoint/rotate_secret", json={"previous_secret_valid_s": 0}).status_code == 200
    response = http.post("/v1/videos", json={**JOB, "webhook_url": "http://127.0.0.1:9/hook", "webhook_events": []})
    assert response.status_code == 202, response.text
    response = http.post("/v1/videos", json={**JOB, "webhook_url": "http://10.0.0.1/hook"})
    assert response.status_code == 400 and "10.0.0.1" in response.json()["error"]["message"]


def test_unknown_events_are_refused_by_name(api: httpx.Client) -> None:
    response = api.post("/v1/videos", json={**JOB, "webhook_url": "http://127.0.0.1:9/", "webhook_events": ["video.done"]})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "webhook_events" and "video.done" in response.json()["error"]["message"]
    response = api.put("/v1/webhook_endpoint", json={"url": "http://127.0.0.1:9/", "events": ["finished"]})
    assert response.status_code == 400 and "'finished'" in response.json()["error"]["message"]


def test_a_job_webhook_needs_a_signing_secret(tenant: tuple[str, httpx.Client]) -> None:
    name, http = tenant  # a new tenant: no secret yet
    response = http.post("/v1/videos", json={**JOB, "webhook_url": "http://127.0.0.1:9/"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "webhook_url" and "signing secret" in error["message"] and repr(name) in error["message"]
    created = http.post("/v1/webhook_endpoint/rotate_secret").json()
    assert created["secret"].startswith("whsec_") and created["previous_secret_expires_at"] is None
    assert created["secret_hint"] == created["secret"][:10] + "…" and created["tenant"] == name
    assert http.get("/v1/webhook_endpoint").json()["secret_hint"] == created["secret_hint"]


def test_setting_an_endpoint_creates_the_secret_once(tenant: tuple[str, httpx.Client]) -> None:
    _, http = tenant  # a new tenant: no secret and no endpoint yet
    assert http.get("/v1/webhook_endpoint").json()["secret_hint"] is None
    first = http.put("/v1/webhook_endpoint", json={"url": "http://127.0.0.1:9/a", "events": ["video.failed"]})
    assert first.status_code == 200 and first.json()["secret"].startswith("whsec_"), first.text
    assert first.json()["events"] == ["video.failed"] and first.json()["url"] == "http://127.0.0.1:9/a"
    again = http.put("/v1/webhook_endpoint", json={"url": "http://127.0.0.1:9/b"}).json()
    assert "secret" not in again and again["url"] == "http://127.0.0.1:9/b"
    assert again["secret_hint"] == first.json()["secret_hint"]
    assert http.delete("/v1/webhook_endpoint").json()["deleted"] is True
    shown = http.get("/v1/webhook_endpoint").json()
    assert shown["status"] == "none" and shown["secret_hint"] == first.json()["secret_hint"]  # the secret stays


def test_the_cli_rotates_and_shows_the_secret(stack: Stack, tenant: tuple[str, httpx.Client]) -> None:
    name, http = tenant
    key = http.headers["Authorization"].removeprefix("Bearer ")

    def wanq(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "wanq", "webhooks", *args, "--url", stack.api_url, "--api-key", key]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)

    rotated = wanq("rotate-secret", "--previous-valid-s", "0")
    secret = json.loads(rotated.stdout)["secret"]
    assert secret.startswith("whsec_") and "shown this once" in rotated.stderr
    shown = json.loads(wanq("show").stdout)
    assert shown["tenant"] == name and shown["secret_hint"] == secret[:10] + "…" and "secret" not in shown


def test_only_admins_may_name_another_tenant(api: httpx.Client, tenant: tuple[str, httpx.Client]) -> None:
    name, http = tenant
    response = api.get("/v1/webhook_endpoint", params={"tenant": "someone-else"})  # the stack's admin key
    assert response.status_code == 200, response.text
    assert response.json()["tenant"] == "someone-else" and response.json()["status"] == "none"
    response = http.get("/v1/webhook_endpoint", params={"tenant": "someone-else"})  # a plain tenant's key
    assert response.status_code == 404 and "someone-else" in response.json()["error"]["message"]
    assert http.get("/v1/webhook_endpoint", params={"tenant": name}).json()["tenant"] == name  # its own name is fine


def test_the_connect_step_checks_again(receiver: Receiver) -> None:
    """DNS may answer differently at connect time (rebinding): the connection itself is refused."""
    with pytest.raises(InvalidRequest, match="loopback"):
        GuardedBackend(parse_allowlist([])).connect_tcp("127.0.0.1", receiver.port, timeout=2)
    GuardedBackend(parse_allowlist(["127.0.0.1/32"])).connect_tcp("127.0.0.1", receiver.port, timeout=2).close()


def test_an_attempt_to_a_refused_address_fails_without_sending(settings: Settings, receiver: Receiver) -> None:
    # A delivery process without the allowlist, on its own key prefix so the stack's process ignores it.
    strict = settings.model_copy(
        update={
            "webhooks": settings.webhooks.model_copy(update={"allowlist": []}),
            "redis": settings.redis.model_copy(update={"key_prefix": "wanqtest"}),
        }
    )
    deliverer = Deliverer(strict, redis.Redis.from_url(settings.redis.url))
    store: WebhookStore = deliverer.store
    store.rotate_secret("default", 0)
    hook = f"/rebound-{time.time_ns()}"
    delivery = Delivery(
        id=f"msg_test{time.time_ns()}", job_id="video_x", tenant="default", event="video.completed", target="job",
        url=receiver.url(hook), max_attempts=3, body='{"type":"video.completed"}',
    )  # fmt: skip
    assert store.add_delivery(delivery)
    deliverer.attempt(delivery.id)
    stored = store.get_delivery(delivery.id)
    assert stored is not None and stored.status == "failed" and stored.next_attempt_at is None
    assert stored.attempts[0].error is not None and "loopback" in stored.attempts[0].error
    assert receiver.requests(hook) == []
    assert store.redis.zscore(store.due_key, delivery.id) is None


def test_progress_is_throttled_per_job(settings: Settings) -> None:
    store = WebhookStore(redis.Redis.from_url(settings.redis.url), keys=Keys("wanqtest"))
    job = f"video_throttle{time.time_ns()}"
    assert store.progress_slot(job, 60) is True
    assert store.progress_slot(job, 60) is False
    assert store.progress_slot(job + "other", 60) is True

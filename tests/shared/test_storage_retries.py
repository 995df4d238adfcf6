"""Every S3 call goes through one bounded retry: error answers (503 SlowDown, 500) as well as refused connections,
against moto's real S3 server behind a loopback proxy that answers errors for the next few connections."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.errors import StorageUnavailable
from shared.settings import S3Settings
from shared.storage import Storage
from tests.proxy import Proxy
from wanq.stack import Stack

ATTEMPTS = 3


class ErrorProxy(Proxy):
    """A TCP proxy to the S3 endpoint; the next `failures` connections get an S3 error answer instead."""

    def __init__(self, target_port: int) -> None:
        self.failures = 0
        self.failed = 0
        self.answer = (503, "SlowDown")
        super().__init__(target_port)

    def intercept(self, client: socket.socket) -> bool:
        if self.failures <= 0:
            return False
        self.failures -= 1
        self.failed += 1
        threading.Thread(target=self._refuse, args=(client,), daemon=True).start()
        return True

    def _refuse(self, client: socket.socket) -> None:
        status, code = self.answer
        body = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>injected</Message></Error>'.encode()
        client.settimeout(2)
        try:
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = client.recv(65536)
                if not chunk:
                    return
                received += chunk
            head = f"HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
            client.sendall(head.encode() + b"Connection: close\r\n\r\n" + body)
            client.shutdown(socket.SHUT_WR)
            while client.recv(65536):  # the request's body, until the client gives up the connection
                pass
        except OSError:
            pass
        finally:
            client.close()


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    stack = Stack(tmp_path_factory.mktemp("moto"))
    try:
        url = stack.start_s3()
        Storage(S3Settings(endpoint_url=url, bucket="retries")).ensure_bucket()
        yield url
    finally:
        stack.stop()


@pytest.fixture
def proxy(moto: str) -> Iterator[ErrorProxy]:
    proxy = ErrorProxy(int(moto.rsplit(":", 1)[1]))
    yield proxy
    proxy.close()


def proxied(proxy: ErrorProxy) -> Storage:
    """A fresh client (no kept-alive connection that would pass the proxy by) with a quick backoff."""
    settings = S3Settings(
        endpoint_url=f"http://127.0.0.1:{proxy.port}", bucket="retries", upload_attempts=ATTEMPTS, upload_backoff_s=0.01
    )
    return Storage(settings)


@pytest.mark.parametrize("answer", [(503, "SlowDown"), (500, "InternalError")])
def test_error_answers_during_an_upload_are_retried_and_store_one_copy(
    proxy: ErrorProxy, moto: str, tmp_path: Path, answer: tuple[int, str]
) -> None:
    # boto3's upload_file turns S3's error answer into S3UploadFailedError (neither a ClientError nor a BotoCoreError)
    # once botocore's own tries are spent: three failed connections spend at least the first of our tries.
    path = tmp_path / "video.mp4"
    path.write_bytes(b"x" * 4096)
    proxy.answer, proxy.failures = answer, 3
    proxied(proxy).upload_file(path, "videos/job/1/video.mp4", "video/mp4")
    assert proxy.failed == 3
    direct = Storage(S3Settings(endpoint_url=moto, bucket="retries"))
    assert direct.list_keys("videos/job/") == ["videos/job/1/video.mp4"]
    assert direct.get_bytes("videos/job/1/video.mp4") == path.read_bytes()


def test_error_answers_to_other_calls_are_retried(proxy: ErrorProxy, moto: str, tmp_path: Path) -> None:
    storage = proxied(proxy)
    proxy.failures = 3
    storage.put_bytes(b"png", "videos/other/input.png", "image/png")
    proxy.failures = 3
    storage.download("videos/other/input.png", tmp_path / "input.png")
    assert (tmp_path / "input.png").read_bytes() == b"png"
    proxy.failures = 3
    assert storage.delete_prefix("videos/other/") == 1
    assert proxy.failed == 9
    with pytest.raises(KeyError):
        storage.download("videos/other/input.png", tmp_path / "gone.png")  # absent: no retry, KeyError


def test_a_lasting_outage_ends_as_storage_unavailable_without_the_local_path(proxy: ErrorProxy, tmp_path: Path) -> None:
    path = tmp_path / "video.mp4"
    path.write_bytes(b"x" * 1024)
    proxy.failures = 1000
    with pytest.raises(StorageUnavailable) as raised:
        proxied(proxy).upload_file(path, "videos/lost/1/video.mp4", "video/mp4")
    assert raised.value.code == "storage_unavailable"
    message = str(raised.value)
    assert f"after {ATTEMPTS} attempts" in message and "videos/lost/1/video.mp4" in message and "SlowDown" in message
    assert str(tmp_path) not in message, message
    assert proxy.failed >= ATTEMPTS  # each of our tries is one or more of botocore's

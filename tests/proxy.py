"""A TCP proxy on a free loopback port in front of a local server (moto's S3 in the tests), whose subclasses take
some connections over to inject a fault: an error answer, a refused connection."""

from __future__ import annotations

import socket
import threading

from wanq.stack import free_port


class Proxy:
    """Pipes every connection to `target_port`, unless `intercept` takes it over."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def intercept(self, client: socket.socket) -> bool:
        """Whether this connection was handled here instead of being piped to the target (and then closed)."""
        return False

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            if self.intercept(client):
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop = True
        self._server.close()

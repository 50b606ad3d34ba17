"""A round-robin TCP load balancer on loopback, for the cluster tests and the cluster benchmark.

Each new connection goes to the next replica that accepts it (one that refuses is skipped), as a
Kubernetes Service through kube-proxy, or haproxy's `balance roundrobin`, would send it. It runs
on its own thread and event loop and only copies bytes.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
from contextlib import suppress


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Balancer:
    """Round-robin TCP proxy on a loopback port, on its own thread and event loop."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._next = itertools.cycle(range(len(backends)))
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A reset by either side (a replica killed under load) ends the pipe like an EOF does:
        # the client sees its connection drop, as behind a real balancer.
        try:
            with suppress(ConnectionError, OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(len(self.backends)):  # a replica that refuses is skipped
            port = self.backends[next(self._next)]
            try:
                up_r, up_w = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))
            return
        writer.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port)
        )
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _shutdown(self) -> None:
        """Stop accepting, end every open pipe, then stop the loop."""
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop.stop()

    def __enter__(self) -> Balancer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        self._thread.join(10)

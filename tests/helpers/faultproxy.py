"""A faulting TCP proxy: sits in front of a real server and misbehaves on request.

Modes (``proxy.mode = Fault(...)`` may be changed between connections):
- ``pass``: forward both ways untouched
- ``delay``: hold the server's first bytes back for ``seconds`` (a slow greeting)
- ``delay_after``: forward ``after`` chunks of the server's output (the greeting is one), then
  hold the next back for ``seconds`` (a slow answer to a later command)
- ``stall``: accept and never send anything (also a TLS handshake that never completes)
- ``stall_after``: forward ``after`` chunks of the server's output, then go silent
- ``reset``: accept and reset the connection at once (RST)
- ``reset_after``: forward ``after`` chunks of the server's output, then reset
- ``close``: accept and close cleanly at once (EOF)
- ``garbage``: answer with bytes that are no protocol at all, then close
- ``drip``: forward the server's output one byte every ``seconds``
- ``endless``: send ``payload`` over and over, as fast as the client reads
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass
from typing import Self


@dataclass(frozen=True)
class Fault:
    kind: str = "pass"
    seconds: float = 0.0
    after: int = 0
    payload: bytes = b"\x00\xff garbage \x1b[0m\r\n"


class FaultProxy:
    def __init__(self, upstream_port: int, mode: Fault | None = None) -> None:
        self.upstream_port = upstream_port
        self.mode = mode or Fault()
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = asyncio.Event()

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> None:
        """A network path gone dead: new connections stall, and the open ones fall silent
        both ways (nothing closes them: a half-open path, as behind a broken router)."""
        self.mode = Fault("stall")
        for writer in list(self._writers):
            transport = writer.transport
            if isinstance(transport, asyncio.ReadTransport):
                transport.pause_reading()

    async def stop(self) -> None:
        # Handlers are made to return, never cancelled: asyncio's stream callback would log
        # the cancellation as an error.
        self._closing.set()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        mode = self.mode
        up_writer: asyncio.StreamWriter | None = None
        try:
            if mode.kind == "stall":
                await self._pause()  # until the client gives up or the proxy stops
                return
            if mode.kind == "reset":
                _reset(writer)
                return
            if mode.kind == "close":
                return
            if mode.kind == "garbage":
                writer.write(mode.payload * 4)
                await writer.drain()
                return
            if mode.kind == "endless":
                while not self._closing.is_set():
                    writer.write(mode.payload * 64)
                    await writer.drain()
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            self._writers.add(up_writer)
            upward = asyncio.ensure_future(_pump(reader, up_writer))
            try:
                await self._downstream(up_reader, writer, mode)
            finally:
                up_writer.transport.abort()
                writer.transport.abort()
                await asyncio.wait([upward], timeout=2)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()
            self._tasks.discard(task)

    async def _downstream(
        self, up: asyncio.StreamReader, writer: asyncio.StreamWriter, mode: Fault
    ) -> None:
        chunks = 0
        while True:
            data = await up.read(65536)
            if not data:
                return
            if mode.kind == "delay" and chunks == 0:
                await self._pause(mode.seconds)
            if mode.kind in {"stall_after", "reset_after", "delay_after"} and chunks == mode.after:
                if mode.kind == "stall_after":
                    await self._pause()
                    return
                if mode.kind == "reset_after":
                    _reset(writer)
                    return
                await self._pause(mode.seconds)
            chunks += 1
            if mode.kind == "drip":
                for byte in data:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await self._pause(mode.seconds)
            else:
                writer.write(data)
                await writer.drain()


    async def _pause(self, seconds: float | None = None) -> None:
        """Sleep (forever by default); end the connection if the proxy stops meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)
        if self._closing.is_set():
            raise ConnectionAbortedError


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()

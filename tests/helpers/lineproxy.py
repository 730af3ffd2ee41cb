"""A proxy in front of a real line-based server (Dovecot's IMAP) that misbehaves per command.

Each line the client sends goes through ``rule(line)`` first: ``None`` forwards it, ``CUT``
drops the connection, any other bytes are answered in its place (the server never sees the
command). With ``rtt``, each chunk of the server's output is held back that long (a server
across an ocean). For the faults a byte-level proxy cannot aim (tests/helpers/faultproxy.py):
a BAD to one command, a huge answer to one search, a connection lost on one command.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Self

CUT = b"\x00cut"  # what a rule returns to drop the connection on that line

Rule = Callable[[bytes], bytes | None]


def tag_of(line: bytes) -> bytes:
    return line.split(b" ", 1)[0]


class LineProxy:
    def __init__(self, upstream: int, rule: Rule = lambda _line: None, *,
                 rtt: float = 0.0) -> None:
        self.upstream, self.rule, self.rtt = upstream, rule, rtt
        self.answered = 0  # lines the proxy answered (or cut on) itself
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):  # the handlers see EOF and end
            writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        self._writers |= {writer, up_writer}

        async def down() -> None:
            while data := await up_reader.read(65536):
                if self.rtt:
                    await asyncio.sleep(self.rtt)
                writer.write(data)
                await writer.drain()

        pump = asyncio.create_task(down())
        try:
            while line := await reader.readline():
                answer = self.rule(line)
                if answer is None:
                    up_writer.write(line)
                    await up_writer.drain()
                    continue
                self.answered += 1
                if answer == CUT:
                    break
                writer.write(answer)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()
            self._writers -= {writer, up_writer}
            self._tasks.discard(task)

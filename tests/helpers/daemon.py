"""Run ``outagewatch run`` as a real subprocess and talk to it over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
from tests.helpers.ports import free_port


class DaemonProcess:
    def __init__(self, config: Path, *, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self._process: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._reader: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self, port: int) -> DaemonProcess:
        self.port = port
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "outagewatch", "--log-level", "debug", "run",
            "-c", str(self.config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=self.env,
        )
        self._reader = asyncio.create_task(self._read())
        await self.wait_for(self.ready, timeout=15, what="readyz")
        return self

    @property
    def process(self) -> asyncio.subprocess.Process:
        """The running (or finished) daemon process; only after ``start``."""
        assert self._process is not None, "start() it first"
        return self._process

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.lines.append(line.decode().rstrip("\n"))

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"event": "<not json>", "line": line})
        return out

    def has_event(self, name: str) -> bool:
        return any(e.get("event") == name for e in self.events())

    async def get(self, path: str) -> tuple[int, str]:
        return await self.request("GET", path)

    async def request(self, method: str, path: str, *, json_body: Any = None,
                      token: str | None = None) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as session, session.request(
            method, f"http://127.0.0.1:{self.port}{path}", json=json_body, headers=headers,
            timeout=aiohttp.ClientTimeout(total=5),
        ) as response:
            return response.status, await response.text()

    async def ready(self) -> bool:
        try:
            status, _ = await self.get("/readyz")
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False
        return status == 200

    async def metrics(self) -> str:
        return (await self.get("/metrics"))[1]

    async def wait_for(self, check: Any, *, timeout: float, what: str) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            if self._process is not None and self._process.returncode is not None:
                raise AssertionError(f"daemon exited while waiting for {what}:\n"
                                     + "\n".join(self.lines[-30:]))
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}:\n" + "\n".join(self.lines[-30:]))

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._reader is not None:
            await self._reader
        return self.process.returncode or 0


TINY = {"interval": "0.25s", "timeout": "0.8s", "threshold": "0.3s", "window": "1.5s",
        "recover_after": "2"}  # the end-to-end tests' accelerated rules


async def wait(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def config_text(port: int, targets: list[str], *, state: Path | None = None,
                extra: str = "", server: str = "", **defaults: str) -> str:
    """A daemon config on tiny thresholds, with its own state file (never /var/lib)."""
    state = state or Path(tempfile.mkdtemp(prefix="ow-state-")) / "state.db"
    merged = {"interval": "0.5s", "timeout": "2s", "threshold": "1s", "window": "3s",
              **defaults}
    lines = [
        f'server: {{listen: "127.0.0.1:{port}"{", " + server if server else ""}}}',
        "defaults: {" + ", ".join(f"{k}: {v}" for k, v in merged.items()) + "}",
        ("platforms: {eu: {incident_recipients: [oncall@example.com],"
        " info_recipients: [info@example.com]}}"),
        "targets:",
        *[f"  - {t}" for t in targets],
        f"state: {{path: '{state}'}}",
    ]
    return "\n".join(lines) + "\n" + extra


__all__ = ["TINY", "DaemonProcess", "config_text", "free_port", "wait"]

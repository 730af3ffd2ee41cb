"""The systemd notify protocol, spoken by the daemon itself (sd_notify(3), no library).

READY=1 once the configuration, store, metrics server and scheduler are up; STATUS= with a
one-line summary; STOPPING=1 on shutdown; WATCHDOG=1 every half ``WatchdogSec`` but only
while the scheduler's heartbeat is fresh, so that a wedged scheduler gets restarted rather
than hidden by a merely running event loop.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

log = structlog.get_logger("outagewatch.systemd")


def notify(message: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` to $NOTIFY_SOCKET; False when not run by systemd (or it failed)."""
    address = (environ or os.environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        # never blocking: a notify socket whose queue is full (systemd busy, or a listener
        # that does not read) would otherwise stop the whole event loop
        kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        with socket.socket(socket.AF_UNIX, kind) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify_failed", error=str(exc))
        return False
    return True


def watchdog_period(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when not asked."""
    env = environ or os.environ
    usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


async def watchdog(period: float, heartbeat_age: Callable[[], float], *,
                   status: Callable[[], str] = lambda: "",
                   send: Callable[[str], bool] = notify) -> None:
    """Ping every ``period`` while the heartbeat is younger than two periods (with a fresh
    STATUS line)."""
    while True:
        age = heartbeat_age()
        if age < 2 * period:
            line = status()
            send(f"WATCHDOG=1\nSTATUS={line}" if line else "WATCHDOG=1")
        else:
            log.error("watchdog_withheld", heartbeat_age_s=round(age, 1),
                      note="the scheduler is stuck; systemd will restart us")
        await asyncio.sleep(period)

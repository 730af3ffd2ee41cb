"""What ``check-config`` looks at beyond the file itself: would ``run`` fail or refuse
something at start? The state file must be usable (looked at, nothing created), and the
file's planned maintenance windows must have their notice; both say it in the words ``run``
would use. Warnings (``config.config_warnings``) come on top.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from outagewatch.core import maintenance as rules
from outagewatch.topology import build_topology

if TYPE_CHECKING:
    from datetime import datetime
    from pathlib import Path

    from outagewatch.config import Settings


def problems(settings: Settings, *, now: datetime) -> list[str]:
    """What would stop ``run`` (or be refused by it) with this configuration at ``now``."""
    found = []
    if settings.state.url is None:
        state = state_problem(settings.state.path)
        if state is not None:
            found.append(state)
    found += window_problems(settings, now=now)
    return found


def state_problem(path: Path) -> str | None:  # noqa: PLR0911 - one return per way run fails
    """The error ``run`` would give for the SQLite state at ``path`` (app.open_store, then
    the store's lock and open), found without creating anything; None if it is usable. A
    state locked by a running daemon is no problem here."""
    parent = path.parent
    if not parent.exists():
        ancestor = parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            return f"state.path: cannot create {parent}: {os.strerror(errno.ENOTDIR)}"
        if not _writable(ancestor):
            return f"state.path: cannot create {parent}: {_refusal(ancestor)}"
        return None  # run creates the directory (ours, so writable) and the file in it
    if not parent.is_dir():
        return f"state.path: cannot create {parent}: {os.strerror(errno.EEXIST)}"
    lock = path.with_name(path.name + ".lock")
    if lock.exists() and not os.access(lock, os.R_OK | os.W_OK):
        return f"state.path: cannot create {lock}: {_refusal(lock)}"
    if not _writable(parent):
        return f"state.path: cannot create {lock}: {_refusal(parent)}"
    if path.is_dir() or (path.exists() and not os.access(path, os.R_OK)):
        return f"state.path: cannot use {path}: unable to open database file"
    if path.exists() and not os.access(path, os.W_OK):
        return f"state.path: cannot use {path}: attempt to write a readonly database"
    return None


def _writable(directory: Path) -> bool:
    return os.access(directory, os.W_OK | os.X_OK)


def _refusal(path: Path) -> str:
    """Why a write there fails: a read-only file system, or the permissions."""
    read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    return os.strerror(errno.EROFS if read_only else errno.EACCES)


def window_problems(settings: Settings, *, now: datetime) -> list[str]:
    """The file's windows that ``run`` would refuse at ``now``: the same rule
    (core.maintenance.register), on the same calendars. A window that is over is left out:
    it was registered before, or it is history."""
    topology = build_topology(settings, today=now.date())
    found = []
    at = now.timestamp()
    for index, window in enumerate(topology.windows):
        if window.end <= at:
            continue
        try:
            rules.register(window, now=at, calendar=topology.calendars[window.platform],
                           notice=topology.notice_days)
        except rules.Refused as exc:
            found.append(f"maintenance.windows[{index}].start: {window.id}: {exc}")
    return found

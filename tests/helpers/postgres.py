"""A private PostgreSQL cluster on a free loopback port, for storage and cluster-mode tests.

``Postgres.start()`` runs ``initdb`` into a temp dir and starts ``postgres`` on 127.0.0.1 with
scram-sha-256 password auth and ``fsync = off``; a role ``outagewatch`` (not a superuser) owns a
database ``outagewatch``. As root, the server runs as the ``postgres`` OS user (it refuses root).

- ``url`` has no password (``postgresql://outagewatch@127.0.0.1:PORT/outagewatch``); pass
  ``password`` separately, or use ``dsn()`` (libpq keywords, password included).
- ``restart()`` stops and starts the server on the same data dir and port. The default is a fast
  shutdown (SIGINT): open sessions are terminated, as in a real restart. A smart shutdown
  (SIGTERM) waits for every client to disconnect, so with a connected daemon it never ends.
  ``mode="immediate"`` (SIGQUIT) is a crash: the next start runs crash recovery.
- ``stop()`` shuts down (bounded; then SIGKILL for the postmaster and its children) and removes
  the temp dir. If our process dies without stopping it (pytest killed hard), the postmaster
  gets SIGQUIT (PR_SET_PDEATHSIG), so no server outlives the tests; only the temp dir remains.
- ``psql(sql)`` runs SQL as the superuser through the ``psql`` binary and returns its unaligned,
  tuples-only output.
- ``reset()`` empties the app database (a new ``public`` schema), for a test that wants a
  database no one has migrated yet.

For a test session: ``postgres_for_tests()`` is the generator of a session fixture (it starts
one server, or skips with the reason; under ``CI=true`` a missing PostgreSQL fails instead)::

    postgres = pytest.fixture(scope="session", name="postgres")(postgres_for_tests)

The binaries are found on PATH (``initdb``, symlinks followed), else in the newest
``/usr/lib/postgresql/N/bin`` (Debian's ``postgresql`` package; ``make system-deps``).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import pwd
import re
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self, TypedDict

import psycopg
import pytest
from tests.helpers.ports import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

IN_CI = os.environ.get("CI", "").lower() == "true"
MISSING = ("PostgreSQL is not installed (Debian: apt-get install -y --no-install-recommends "
           "postgresql; or make system-deps)")
SERVER_TOOLS = ("initdb", "postgres", "pg_ctl")

DB = "outagewatch"
USER = "outagewatch"
SUPERUSER = "postgres"
OS_USER = "postgres"

ShutdownMode = Literal["smart", "fast", "immediate"]
_SIGNALS: dict[ShutdownMode, signal.Signals] = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}

CONFIG = """
# outagewatch test cluster
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sockets}'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
shared_buffers = 32MB
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
"""

_PR_SET_PDEATHSIG = 1
# Resolved before any fork: the child only makes the call (no import, no lock, no allocation).
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl
_LAUNCHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="postgres-launcher")
_RUNNING: set[Postgres] = set()  # stopped at interpreter exit if a test forgot to


def postgres_binaries() -> Path | None:
    """The ``bin`` dir of the server: where ``initdb`` on PATH really lives (Debian puts only
    wrappers, if anything, on PATH), else the newest ``/usr/lib/postgresql/N/bin``."""
    on_path = shutil.which("initdb")
    if on_path is not None:
        bindir = Path(on_path).resolve().parent
        if all((bindir / tool).is_file() for tool in SERVER_TOOLS):
            return bindir
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/postgres")
             if all((p.parent / tool).is_file() for tool in SERVER_TOOLS)]

    def version(bindir: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name)) or (0,)

    return max(found, key=version, default=None)


def postgres_for_tests(base_dir: Path | None = None) -> Iterator[Postgres]:
    """Body of a session fixture: one server for the session, stopped at its end. Without
    PostgreSQL the tests that use it skip with the reason, or fail under ``CI=true``."""
    if postgres_binaries() is None:
        if IN_CI:
            pytest.fail(MISSING + "; under CI=true this is a failure, not a skip")
        pytest.skip(MISSING)
    server = Postgres.start(base_dir)
    try:
        yield server
    finally:
        server.stop()


class Postgres:
    def __init__(self, bindir: Path, workdir: Path, *, port: int, owns_workdir: bool) -> None:
        self.bindir = bindir
        self.workdir = workdir
        self.datadir = workdir / "data"
        self.logfile = workdir / "server.log"
        self.port = port
        self.host = "127.0.0.1"
        self.dbname = DB
        self.user = USER
        self.password = secrets.token_hex(16)
        self.superuser = SUPERUSER
        self.superuser_password = secrets.token_hex(16)
        self.process: subprocess.Popen[bytes] | None = None
        self._owns_workdir = owns_workdir
        self._run_as = _os_user()
        self._base_config = ""

    # -- public API --------------------------------------------------------------------------

    @classmethod
    def start(cls, base_dir: Path | None = None) -> Postgres:
        """Create and start a cluster in a new temp dir under ``base_dir`` (default: /tmp).

        ``base_dir`` must be reachable by the ``postgres`` user when we are root; pytest's
        ``tmp_path`` is not (``/tmp/pytest-of-root`` is mode 0700).
        """
        bindir = postgres_binaries()
        if bindir is None:
            raise RuntimeError(MISSING)
        parent = Path(base_dir) if base_dir is not None else Path(tempfile.gettempdir())
        workdir = Path(tempfile.mkdtemp(prefix="owpg-", dir=parent))
        server = cls(bindir, workdir, port=0, owns_workdir=True)
        try:
            server._check_socket_path()
            server._prepare_workdir()
            server._initdb()
            server._launch_on_free_port()
            server._create_app_role()
        except BaseException:
            server.stop()
            raise
        return server

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"

    def dsn(self) -> str:
        return (
            f"host={self.host} port={self.port} dbname={self.dbname} user={self.user} "
            f"password={self.password}"
        )

    def superuser_dsn(self) -> str:
        return (
            f"host={self.host} port={self.port} dbname={self.dbname} user={self.superuser} "
            f"password={self.superuser_password}"
        )

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        return self.process.pid if self.process is not None else None

    def restart(self, mode: ShutdownMode = "fast", timeout: float = 15.0) -> None:
        """Stop and start again on the same data dir and port (sessions are cut off)."""
        self._shutdown(mode, timeout)
        self._launch()

    def stop(self, mode: ShutdownMode = "fast", timeout: float = 15.0) -> None:
        """Shut the server down and remove the temp dir. Safe to call twice."""
        try:
            self._shutdown(mode, timeout)
        finally:
            _RUNNING.discard(self)
            if self._owns_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def psql(self, sql: str, *, dbname: str | None = None, timeout: float = 30.0) -> str:
        """Run SQL (any number of statements) as the superuser; stop at the first error."""
        result = subprocess.run(
            [
                self._tool("psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.superuser,
                "-d",
                dbname or self.dbname,
                "-f",
                "-",
            ],
            input=sql.encode(),
            capture_output=True,
            env={**os.environ, "PGPASSWORD": self.superuser_password, "PGCONNECT_TIMEOUT": "5"},
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"psql failed ({result.returncode}): {result.stderr.decode(errors='replace')}"
            )
        return result.stdout.decode().removesuffix("\n")

    def reset(self) -> None:
        """Empty the app database: its sessions are ended and ``public`` is made anew (owned
        by the app role), so the next store migrates from nothing."""
        with psycopg.connect(self.superuser_dsn(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.dbname,),
            )
            conn.execute("SET lock_timeout = '10s'")
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute(f"CREATE SCHEMA public AUTHORIZATION {self.user}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def _tool(self, name: str) -> str:
        """A client binary: next to the server's, else the one on PATH (Debian's wrappers)."""
        local = self.bindir / name
        if local.is_file():
            return str(local)
        return shutil.which(name) or name

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- steps -------------------------------------------------------------------------------

    def _check_socket_path(self) -> None:
        # A Unix socket path must fit in sun_path (108 bytes, with the NUL).
        if len(str(self.workdir / ".s.PGSQL.65535.lock")) > 100:
            raise RuntimeError(f"base dir path too long for a Unix socket: {self.workdir}")

    def _prepare_workdir(self) -> None:
        if self._run_as is None:
            return
        uid, gid = self._run_as
        os.chown(self.workdir, uid, gid)
        self.workdir.chmod(0o700)
        for parent in self.workdir.parents:
            if not _can_traverse(parent, uid, gid):
                raise RuntimeError(
                    f"the {OS_USER} user cannot reach {self.workdir}: {parent} is not "
                    "searchable by it; pass another base_dir (or none, for /tmp)"
                )

    def _initdb(self) -> None:
        pwfile = self.workdir / "pwfile"
        pwfile.write_text(self.superuser_password + "\n")
        pwfile.chmod(0o600)
        if self._run_as is not None:
            os.chown(pwfile, *self._run_as)
        try:
            result = subprocess.run(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.datadir),
                    "-U",
                    self.superuser,
                    f"--pwfile={pwfile}",
                    "-A",
                    "scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ],
                capture_output=True,
                cwd=self.workdir,
                timeout=120,
                check=False,
                **self._user_kwargs(),
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"initdb failed ({result.returncode}): "
                f"{(result.stdout + result.stderr).decode(errors='replace')}"
            )
        self._base_config = (self.datadir / "postgresql.conf").read_text()

    def _launch_on_free_port(self, attempts: int = 3) -> None:
        """Start on a fresh free port; another process can take it between pick and bind."""
        for attempt in range(attempts):
            self.port = free_port()
            (self.datadir / "postgresql.conf").write_text(
                self._base_config + CONFIG.format(port=self.port, sockets=self.workdir)
            )
            try:
                self._launch()
            except RuntimeError:
                if attempt + 1 < attempts and "could not bind" in self.log_tail():
                    continue
                raise
            return

    def _launch(self, timeout: float = 30.0) -> None:
        if self.process is not None:
            raise RuntimeError("postgres is already running")
        # Forked from the launcher thread: the parent-death signal fires when the forking
        # *thread* ends, and a caller's thread may be short-lived (asyncio.to_thread).
        self.process = _LAUNCHER.submit(self._spawn_postmaster).result()
        _RUNNING.add(self)
        self._wait_ready(timeout)

    def _spawn_postmaster(self) -> subprocess.Popen[bytes]:
        with self.logfile.open("ab") as log:
            return subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.datadir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - one resolved C call, see there
                **self._user_kwargs(),
            )

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                _RUNNING.discard(self)
                raise RuntimeError(
                    f"postgres exited with {code} during startup; server log:\n{self.log_tail()}"
                )
            ready = subprocess.run(
                [
                    self._tool("pg_isready"),
                    "-q",
                    "-h",
                    self.host,
                    "-p",
                    str(self.port),
                    "-t",
                    "1",
                ],
                capture_output=True,
                check=False,
            )
            if ready.returncode == 0:
                return
            if time.monotonic() > deadline:
                self._shutdown("immediate", 5)
                raise RuntimeError(
                    f"postgres not ready on port {self.port} within {timeout} s; "
                    f"server log:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _create_app_role(self) -> None:
        self.psql(
            f"CREATE ROLE {self.user} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
            f"PASSWORD '{self.password}';\n"
            f"CREATE DATABASE {self.dbname} OWNER {self.user};\n",
            dbname="postgres",
        )

    def _shutdown(self, mode: ShutdownMode, timeout: float) -> None:
        process = self.process
        if process is None:
            return
        try:
            if process.poll() is None:
                process.send_signal(_SIGNALS[mode])
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    children = _children(process.pid)
                    process.kill()
                    process.wait()
                    for child in children:  # backends survive a killed postmaster briefly
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(child, signal.SIGKILL)
        finally:
            self.process = None

    def _user_kwargs(self) -> _UserKwargs:
        if self._run_as is None:
            return {"user": None, "group": None, "extra_groups": None}
        uid, gid = self._run_as
        return {"user": uid, "group": gid, "extra_groups": []}


class _UserKwargs(TypedDict):
    user: int | None
    group: int | None
    extra_groups: list[int] | None


def _os_user() -> tuple[int, int] | None:
    """(uid, gid) to run the server as, or None to run it as ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(OS_USER)
    except KeyError:
        raise RuntimeError(
            f"running as root, but there is no '{OS_USER}' user to run the server as"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _can_traverse(path: Path, uid: int, gid: int) -> bool:
    st = path.stat()
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            # the field after the parenthesised command name: state, ppid
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _die_with_parent() -> None:
    """In the child, after the uid switch (which would clear it): SIGQUIT when we die."""
    _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGQUIT), 0, 0, 0)


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        with contextlib.suppress(Exception):
            server.stop()

"""A private Dovecot instance on free loopback ports, with the project's own minimal config.

Plain IMAP/POP3 (STARTTLS/STLS offered), implicit TLS IMAPS/POP3S, one test user, and none of
the auth-failure delays that make bad-password tests slow.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.ports import free_port

USER = "probe"
PASSWORD = "s3cret-Pa55"

CONFIG = """\
instance_name = outagewatch-test-{tag}
protocols = imap pop3
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
ssl_dh = </usr/share/dovecot/dh.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
login_trusted_networks = 127.0.0.0/8
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = {uid}
first_valid_gid = {gid}
mail_location = maildir:{d}/mail/%u
mail_max_userip_connections = 1000
default_process_limit = 1000
default_client_limit = 4000
pop3_uidl_format = %08Xu%08Xv
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {d}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/mail/%u
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = {imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = {pop3s}
    ssl = yes
  }}
}}
"""


# With ``lmtp=True`` (Debian: dovecot-lmtpd): an LMTP listener an MTA delivers to. The user
# part of ``probe+Junk@example.test`` names the user, the detail the folder it lands in. And
# an auth socket (``Dovecot.sasl``) for Postfix's SMTP AUTH (``smtpd_sasl_type = dovecot``).
LMTP = """\
protocols = $protocols lmtp
auth_username_format = %Ln
recipient_delimiter = +
lmtp_save_to_detail_mailbox = yes
namespace inbox {{
  inbox = yes
  mailbox Junk {{
    auto = create
    special_use = \\Junk
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp}
  }}
}}
service auth {{
  unix_listener {sasl} {{
    mode = 0666
  }}
}}
"""


def lmtp_installed() -> bool:
    return Path("/usr/lib/dovecot/lmtp").exists()


def dovecot_binary() -> str | None:
    return shutil.which("dovecot") or (
        "/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None
    )


@dataclass
class Dovecot:
    imap: int
    imaps: int
    pop3: int
    pop3s: int
    workdir: Path
    process: subprocess.Popen[bytes]
    lmtp: int = 0  # the LMTP port, when started with lmtp=True

    @property
    def sasl(self) -> Path:
        """The auth socket for an MTA's SMTP AUTH (started with lmtp=True)."""
        return self.workdir / "sasl" / "auth"

    user: str = USER
    password: str = PASSWORD

    @classmethod
    def start(cls, cert: Path, key: Path, *, lmtp: bool = False,
              others: tuple[str, ...] = ()) -> Dovecot:
        """``others``: more users, with the same password (all known from the start: Dovecot
        looks at a changed passwd-file at most once a second)."""
        binary = dovecot_binary()
        if binary is None:
            raise RuntimeError("dovecot is not installed (Debian: dovecot-imapd dovecot-pop3d)")
        workdir = Path(tempfile.mkdtemp(prefix="owdc-", dir="/tmp"))
        workdir.chmod(0o755)
        uid, gid = pwd.getpwnam("mail").pw_uid, grp.getgrnam("mail").gr_gid
        mail = workdir / "mail" / USER / "new"
        mail.mkdir(parents=True)
        (mail / "1.eml").write_text("From: a@example.com\r\nSubject: hi\r\n\r\nhello\r\n")
        for path in [workdir / "mail", *(workdir / "mail").rglob("*")]:
            os.chown(path, uid, gid)
        users = workdir / "users"
        users.write_text("".join(f"{name}:{{PLAIN}}{PASSWORD}\n" for name in (USER, *others)))
        os.chown(users, 0, grp.getgrnam("dovecot").gr_gid)
        users.chmod(0o640)
        for sub in ("run", "state"):
            (workdir / sub).mkdir()
        names = ("imap", "imaps", "pop3", "pop3s", *(("lmtp",) if lmtp else ()))
        ports = {name: free_port() for name in names}
        conf = workdir / "dovecot.conf"
        text = CONFIG.format(d=workdir, cert=cert, key=key, uid=uid, gid=gid, tag=workdir.name,
                             **ports)
        (workdir / "sasl").mkdir(mode=0o755)
        conf.write_text(text + (LMTP.format(sasl=workdir / "sasl" / "auth", **ports)
                                if lmtp else ""))
        process = subprocess.Popen(
            [binary, "-F", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        server = cls(imap=ports["imap"], imaps=ports["imaps"], pop3=ports["pop3"],
                     pop3s=ports["pop3s"], workdir=workdir, process=process,
                     lmtp=ports.get("lmtp", 0))
        server._wait_ready()
        return server

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                log = (self.workdir / "dovecot.log")
                raise RuntimeError(
                    f"dovecot exited: {err} {log.read_text() if log.exists() else ''}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.imap), timeout=1) as sock:
                    if b"ready" in sock.recv(200):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("dovecot did not greet within 20 s")

    def drop(self, user: str, count: int, *, header: str | None = None) -> None:
        """``count`` mails written straight into ``user``'s maildir (``new/``, as delivered an
        hour ago), each with ``header`` (a whole header line) when given."""
        uid, gid = pwd.getpwnam("mail").pw_uid, grp.getgrnam("mail").gr_gid
        home = self.workdir / "mail" / user
        for sub in ("", "new", "cur", "tmp"):
            (home / sub).mkdir(exist_ok=True)
            os.chown(home / sub, uid, gid)
        made = int(time.time()) - 3600
        extra = f"{header}\r\n" if header else ""
        for i in range(count):
            path = home / "new" / f"{made}.M{i}P{os.getpid()}.{uuid.uuid4().hex}"
            path.write_text(f"From: x@example.org\r\nSubject: foreign {i}\r\n{extra}"
                            f"Received: {'a' * 300}\r\n\r\nbody\r\n")
            os.chown(path, uid, gid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

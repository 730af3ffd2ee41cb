"""A private Postfix (Debian ``postfix``) on a free loopback port: the submission server and
MTA of the mail-loop tests, delivering every mail for ``example.test`` to a private Dovecot
over LMTP.

Its own config and queue directories under a temp dir (``postfix -c DIR``), run as root;
the system-wide instance is never touched. It delivers to ``probe@`` and ``boxN@`` (each test
its own mailbox, tests/helpers/loopbox.py). ``hold(address)`` makes mail to that address wait
in the hold queue (a header check), ``release(address)`` delivers it; ``junk(address)`` sends
it to the Junk folder (a header check redirecting to ``box+Junk@``, which Dovecot's LMTP
files in Junk). The rules of one address never touch another's mail.
Given the test CA's certificate and Dovecot's auth socket it also listens for submission
(STARTTLS required, then AUTH) and SMTPS (implicit TLS, then AUTH).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.ports import free_port

DOMAIN = "example.test"
MAILBOX = f"probe@{DOMAIN}"
MAILBOXES = rf"/^(probe|box[0-9]+)@{re.escape(DOMAIN)}$/ ok" + "\n"


def postfix_binary() -> str | None:
    return shutil.which("postfix") or (
        "/usr/sbin/postfix" if Path("/usr/sbin/postfix").exists() else None
    )


# Submission (STARTTLS required, then AUTH) and SMTPS (implicit TLS, then AUTH): only an
# authenticated client may send there.
_SUBMISSION = """\
127.0.0.1:{port} inet n - n - - smtpd
  -o syslog_name=postfix/{name}
  -o smtpd_tls_security_level={level}
  -o smtpd_tls_wrappermode={wrapper}
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_tls_auth_only=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
"""


def _master_cf(port: int, submission: int = 0, smtps: int = 0) -> str:
    """Debian's master.cf, unchrooted (the queue is a plain temp dir), smtpd on ``port``;
    with TLS files, submission and smtps on theirs."""
    lines = []
    for line in Path("/etc/postfix/master.cf").read_text().splitlines():
        fields = line.split()
        if line and not line[0].isspace() and not line.startswith("#") and len(fields) >= 8:
            if fields[0] == "smtp" and fields[1] == "inet":
                fields[0] = f"127.0.0.1:{port}"
            fields[4] = "n"
            lines.append(" ".join(fields))
        else:
            lines.append(line)
    text = "\n".join(lines) + "\n"
    if submission:
        text += _SUBMISSION.format(port=submission, name="submission", level="encrypt",
                                   wrapper="no")
    if smtps:
        text += _SUBMISSION.format(port=smtps, name="smtps", level="encrypt", wrapper="yes")
    return text


@dataclass
class Postfix:
    port: int
    workdir: Path
    lmtp_port: int
    submission: int = 0  # STARTTLS + AUTH, when started with TLS files and an auth socket
    smtps: int = 0  # implicit TLS + AUTH, likewise
    rules: dict[str, str] = field(default_factory=dict)  # address -> its header check

    @property
    def config(self) -> Path:
        return self.workdir / "etc"

    @property
    def maillog(self) -> Path:
        return self.workdir / "maillog"

    @classmethod
    def start(
        cls, lmtp_port: int, *, cert: Path | None = None, key: Path | None = None,
        sasl: Path | None = None,
    ) -> Postfix:
        """With ``cert``, ``key`` and ``sasl`` (Dovecot's auth socket): also submission and
        smtps ports, where clients authenticate through Dovecot."""
        if postfix_binary() is None:
            raise RuntimeError("postfix is not installed (Debian: postfix)")
        workdir = Path(tempfile.mkdtemp(prefix="owpf-", dir="/tmp"))
        workdir.chmod(0o755)
        secure = cert is not None and key is not None and sasl is not None
        server = cls(port=free_port(), workdir=workdir, lmtp_port=lmtp_port,
                     submission=free_port() if secure else 0,
                     smtps=free_port() if secure else 0)
        etc = server.config
        etc.mkdir()
        (etc / "master.cf").write_text(_master_cf(server.port, server.submission, server.smtps))
        (etc / "main.cf").write_text("")
        (etc / "header_checks").write_text("")
        (etc / "mailboxes").write_text(MAILBOXES)
        data = workdir / "data"
        data.mkdir()
        (workdir / "queue").mkdir()
        shutil.chown(data, "postfix")
        server.postconf(
            "compatibility_level=3.6",
            f"queue_directory={workdir}/queue",
            f"data_directory={data}",
            f"maillog_file_prefixes={workdir}",
            f"maillog_file={server.maillog}",
            "inet_interfaces=127.0.0.1",
            "inet_protocols=ipv4",
            "myhostname=mx.example.test",
            "mydestination=",
            "alias_maps=",
            "alias_database=",
            "local_recipient_maps=",
            "recipient_delimiter=+",
            f"virtual_mailbox_domains={DOMAIN}",
            f"virtual_mailbox_maps=regexp:{etc}/mailboxes",
            f"virtual_transport=lmtp:inet:127.0.0.1:{lmtp_port}",
            "mynetworks=127.0.0.0/8",
            "smtpd_relay_restrictions=permit_mynetworks,reject_unauth_destination",
            f"header_checks=regexp:{etc}/header_checks",
            "smtpd_banner=$myhostname ESMTP",
            "lmtp_connection_cache_on_demand=no",
            "queue_run_delay=300s",
        )
        if secure:
            server.postconf(
                f"smtpd_tls_cert_file={cert}",
                f"smtpd_tls_key_file={key}",
                "smtpd_sasl_type=dovecot",
                f"smtpd_sasl_path={sasl}",
            )
        server._postfix("start")
        server._wait_ready()
        return server

    def postconf(self, *settings: str) -> None:
        subprocess.run(["postconf", "-c", str(self.config), "-e", *settings], check=True,
                       capture_output=True, timeout=30)

    def _postfix(self, command: str) -> None:
        done = subprocess.run([postfix_binary() or "postfix", "-c", str(self.config), command],
                              capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            log = self.maillog.read_text() if self.maillog.exists() else ""
            raise RuntimeError(f"postfix {command} failed: {done.stderr} {log[-2000:]}")

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(200).startswith(b"220"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("postfix did not greet within 20 s")

    def _rule(self, address: str, action: str | None) -> None:
        """Set (or with None, drop) the header check for mail to ``address``."""
        if action is None:
            if self.rules.pop(address, None) is None:
                return
        else:
            self.rules[address] = f"/^To:.*<?{re.escape(address)}>?$/ {action}"
        (self.config / "header_checks").write_text("".join(f"{rule}\n" for rule in
                                                           self.rules.values()))
        self._postfix("reload")
        time.sleep(0.3)  # reload: the cleanup daemons restart with the new rules

    def hold(self, address: str = MAILBOX) -> None:
        """Mail to ``address`` arriving from now on waits in the hold queue (``postsuper
        -h``'s queue), until ``release()``."""
        self._rule(address, "HOLD held by the test")

    def junk(self, address: str = MAILBOX) -> None:
        """Mail to ``address`` arriving from now on lands in its Junk folder."""
        user, _, domain = address.partition("@")
        self._rule(address, f"REDIRECT {user}+Junk@{domain}")

    def normal(self, address: str = MAILBOX) -> None:
        self._rule(address, None)

    def release(self, address: str = MAILBOX) -> None:
        """Deliver what waits: new mail to ``address`` is no longer held, held mail is
        released (``postsuper -H ALL``) and the queue flushed (``postqueue -f``)."""
        self.normal(address)
        subprocess.run(["postsuper", "-c", str(self.config), "-H", "ALL"], check=True,
                       capture_output=True, timeout=30)
        subprocess.run(["postqueue", "-c", str(self.config), "-f"], check=True,
                       capture_output=True, timeout=30)

    def held(self) -> int:
        """Mails in the hold queue now."""
        hold = self.workdir / "queue" / "hold"
        return sum(1 for p in hold.rglob("*") if p.is_file()) if hold.exists() else 0

    def delays(self) -> dict[str, float]:
        """Message-ID -> the MTA's own delay for it (``delay=`` of its ``status=sent`` line:
        seconds from its arrival in the queue to its delivery, to 10 ms)."""
        text = self.maillog.read_text() if self.maillog.exists() else ""
        ids = dict(re.findall(r" ([0-9A-F]+): message-id=(<[^>]*>)", text))
        sent = re.findall(r" ([0-9A-F]+): to=<[^>]*>, .*?delay=([0-9.]+), .*status=sent", text)
        return {ids[queue_id]: float(delay) for queue_id, delay in sent if queue_id in ids}

    def stop(self) -> None:
        try:
            self._postfix("stop")
        except (RuntimeError, OSError):
            pid = self.workdir / "queue" / "pid" / "master.pid"
            if pid.exists():
                subprocess.run(["kill", pid.read_text().strip()], check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

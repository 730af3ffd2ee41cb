"""Issue 14: the ``mailloop`` target type in the configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from outagewatch.config import MailLoopTarget, load_settings
from outagewatch.errors import ConfigError

LOOP = """\
platforms: {{eu: {{}}}}
targets:
  - name: imap-eu
    platform: eu
    type: imap
    host: imap.example.net
    username: probe
    password_file: {missing}
  - name: loop-eu
    platform: eu
    type: mailloop
    submit:
      host: smtp.example.net
      port: 587
      tls: starttls
      username: probe@example.net
      password_file: {secret}
    fetch:
      type: imap
      host: imap.example.net
      tls: implicit
      username: probe@example.net
      password_file: {secret}
      mailbox: INBOX
      junk: Junk
    from: outagewatch@example.net
    to: probe@example.net
{extra}"""


def write(tmp_path: Path, extra: str = "", **fields: str) -> Path:
    secret = tmp_path / "secret"
    secret.write_text("loop-Pa55\n")
    path = tmp_path / "c.yaml"
    values = {"missing": str(tmp_path / "nope"), "secret": str(secret), "extra": extra}
    path.write_text(LOOP.format(**{**values, **fields}))
    return path


def test_a_loop_target_loads_with_its_own_default_threshold(tmp_path):
    """A loop's threshold (5m) and timeout (6m) default apart from a login's (30s, 35s);
    submit and fetch take the SMTP and IMAP probes' keys, their secrets resolved."""
    settings = load_settings(write(tmp_path), only_targets={"loop-eu"})
    loop = settings.targets[1]
    assert isinstance(loop, MailLoopTarget)
    rule = settings.rule_for(loop)
    assert (300.0, 360.0) == (rule.threshold, rule.timeout)
    assert (30.0, 35.0) == (settings.rule_for(settings.targets[0]).threshold,
                            settings.rule_for(settings.targets[0]).timeout)
    assert ("loop-Pa55", "loop-Pa55") == (loop.submit.secret(), loop.fetch.secret())
    assert (587, 993, "Junk") == (loop.submit.effective_port, loop.fetch.effective_port,
                                  loop.fetch.junk)
    assert ("outagewatch@example.net", "probe@example.net") == (loop.sender, loop.to)
    assert "smtp.example.net" == loop.host


def test_its_threshold_default_is_a_setting(tmp_path):
    path = write(tmp_path, extra="defaults: {loop_threshold: 2m, loop_timeout: 3m}\n")
    settings = load_settings(path, only_targets={"loop-eu"})
    rule = settings.rule_for(settings.targets[1])
    assert (120.0, 180.0) == (rule.threshold, rule.timeout)


def test_a_load_for_other_targets_leaves_its_secrets_alone(tmp_path):
    """``probe -t imap-eu`` does not read the loop's secret files (nor fail on them)."""
    path = write(tmp_path, secret=str(tmp_path / "absent"), missing=str(tmp_path / "secret"))
    settings = load_settings(path, only_targets={"imap-eu"})
    loop = settings.targets[1]
    assert isinstance(loop, MailLoopTarget)
    assert (None, None) == (loop.submit.password, loop.fetch.password)


def test_a_missing_secret_file_is_one_line(tmp_path):
    path = write(tmp_path, secret=str(tmp_path / "absent"))
    with pytest.raises(ConfigError) as info:
        load_settings(path, only_targets={"loop-eu"})
    assert all("\n" not in line for line in info.value.problems)
    assert any(line.startswith("targets[loop-eu].submit.password_file: cannot read")
               for line in info.value.problems), info.value.problems


def test_pop3_fetch_loads_with_its_ports(tmp_path):
    """``fetch.type: pop3`` takes the POP3 probe's default ports (995 for implicit TLS)."""
    path = write(tmp_path)
    path.write_text(path.read_text().replace("      type: imap\n", "      type: pop3\n")
                    .replace("      junk: Junk\n", ""))
    loop = load_settings(path, only_targets={"loop-eu"}).targets[1]
    assert isinstance(loop, MailLoopTarget)
    assert ("pop3", 995) == (loop.fetch.type, loop.fetch.effective_port)


def test_junk_with_pop3_is_refused_in_one_line(tmp_path):
    """POP3 has one mailbox: a junk folder cannot be looked at."""
    path = write(tmp_path)
    path.write_text(path.read_text().replace("      type: imap\n", "      type: pop3\n"))
    with pytest.raises(ConfigError) as info:
        load_settings(path, only_targets={"loop-eu"})
    assert 1 == len(info.value.problems), info.value.problems
    assert info.value.problems[0].startswith("targets[loop-eu].fetch:"), info.value.problems
    assert "POP3 has one mailbox" in info.value.problems[0]
    assert "\n" not in info.value.problems[0]

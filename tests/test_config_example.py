"""The shipped example passes the real ``outagewatch check-config`` once the secrets it
names are provided as docs/configuration.md says (issue 12): CI keeps it so."""

from __future__ import annotations

from pathlib import Path

from tests.test_cli import outagewatch

EXAMPLE = Path(__file__).parents[1] / "config" / "outagewatch.example.yaml"
SECRET_FILES = ("imap-probe", "pop3-probe", "relay")


async def test_the_example_passes_check_config_with_its_secrets(tmp_path):
    """Nothing but ``ok``: no problem and no warning."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for name in SECRET_FILES:
        (credentials / name).write_text("s3cret\n")
    env = {"CREDENTIALS_DIRECTORY": str(credentials), "SMTP_PROBE_PASSWORD": "s3cret",
           # the daemon's user may write /var/lib/outagewatch; the test's need not
           "OUTAGEWATCH_STATE__PATH": str(tmp_path / "state" / "state.db")}
    assert (0, "ok\n", "") == await outagewatch("check-config", "-c", str(EXAMPLE), env=env)


async def test_without_its_secrets_it_names_each(tmp_path):
    """Without them, one line per missing secret, each at its target or relay."""
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path), "SMTP_PROBE_PASSWORD": "",
           "OUTAGEWATCH_STATE__PATH": str(tmp_path / "state.db")}
    code, out, _ = await outagewatch("check-config", "-c", str(EXAMPLE), env=env)
    assert 2 == code
    assert ["targets[smtp-eu].password_env: environment variable SMTP_PROBE_PASSWORD is empty",
            (f"targets[imap-eu].password_file: cannot read '{tmp_path}/imap-probe': No such "
             "file or directory"),
            (f"targets[pop3-eu].password_file: cannot read '{tmp_path}/pop3-probe': No such "
             "file or directory"),
            (f"notify.smtp.password_file: cannot read '{tmp_path}/relay': No such file or "
             "directory")] == out.splitlines()

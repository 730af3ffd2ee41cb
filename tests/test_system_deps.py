"""Issue 12: ``make test`` says what it installs from Debian, and why, without recommended
packages; the README names each of those packages. tools/apt-install.sh runs here against a
stand-in ``apt-get`` and ``id`` on PATH: nothing is installed."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "apt-install.sh"

FAKE_APT = """#!/bin/sh
echo "$*" >> "{log}"
case " $* " in
  *" -s "*) for p in "$@"; do case "$p" in -*) ;; install) ;; *)
      echo "Inst $p (1.0 Debian:12/stable [amd64])"; echo "Inst lib$p-dep (1.0 Debian)";;
    esac; done;;
esac
exit 0
"""


def stand_ins(tmp_path: Path, uid: int) -> tuple[dict[str, str], Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "apt.log"
    (bin_dir / "apt-get").write_text(FAKE_APT.format(log=log))
    (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    for tool in ("apt-get", "id"):
        (bin_dir / tool).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin",
           "APT_INSTALL_POLICY_RC_D": str(tmp_path / "policy-rc.d")}
    return env, log


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=30, check=False)


def test_as_root_it_says_what_it_installs_and_skips_recommends(tmp_path):
    env, log = stand_ins(tmp_path, uid=0)
    done = run(env, "no-such-command-ow", "the tests need it", "dovecot-imapd", "dovecot-pop3d")
    assert 0 == done.returncode, done.stderr
    said = done.stderr
    assert "installing Debian packages: dovecot-imapd dovecot-pop3d" in said
    assert "(the tests need it)" in said
    assert "4 packages: dovecot-imapd libdovecot-imapd-dep dovecot-pop3d" in said
    calls = log.read_text().splitlines()
    install = [c for c in calls if c.startswith("install") and " -s " not in f" {c} "]
    assert ["install -y -qq --no-install-recommends dovecot-imapd dovecot-pop3d"] == install
    assert not (tmp_path / "policy-rc.d").exists(), "the guard is removed afterwards"


def test_not_root_it_prints_the_command(tmp_path):
    env, log = stand_ins(tmp_path, uid=1000)
    done = run(env, "no-such-command-ow", "the tests need it", "postgresql")
    assert 0 == done.returncode
    assert ("missing no-such-command-ow (the tests need it): sudo apt-get install "
            "--no-install-recommends postgresql\n") == done.stderr
    assert not log.exists()


def test_a_present_command_installs_nothing(tmp_path):
    env, log = stand_ins(tmp_path, uid=0)
    assert ("", "") == (run(env, "sh", "why", "dash").stderr, "")
    assert not log.exists()


def test_a_path_is_checked_as_a_file(tmp_path):
    """A package without a command on PATH (dovecot-lmtpd) is checked by the program it
    installs, by absolute path: present, nothing happens; absent, it is installed."""
    env, log = stand_ins(tmp_path, uid=0)
    present = tmp_path / "lmtp"
    present.write_text("")
    present.chmod(0o755)
    assert "" == run(env, str(present), "why", "dovecot-lmtpd").stderr
    assert not log.exists()
    done = run(env, str(tmp_path / "absent"), "why", "dovecot-lmtpd")
    assert 0 == done.returncode, done.stderr
    assert "installing Debian packages: dovecot-lmtpd" in done.stderr


def test_dovecot_lmtpd_is_checked_by_its_own_file():
    """Not by Postfix's command: with Postfix installed and dovecot-lmtpd missing, the check
    must still install it. It looks for what the mail-loop fixture needs."""
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    checks = dict(re.findall(r'apt-install\.sh\s+(\S+)\s+"[^"]*"\s+([^\n]+)', makefile))
    assert "/usr/lib/dovecot/lmtp" in checks, checks
    assert ["dovecot-lmtpd"] == checks["/usr/lib/dovecot/lmtp"].split()
    assert ["postfix"] == checks["postfix"].split()
    assert '"/usr/lib/dovecot/lmtp"' in (ROOT / "tests" / "helpers" / "dovecot.py").read_text()


def _system_deps() -> list[str]:
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    recipe = makefile.split("\nsystem-deps:", 1)[1].split("\n\n", 1)[0]
    packages: list[str] = []
    for line in recipe.splitlines():
        match = re.search(r'apt-install\.sh\s+\S+\s+"[^"]*"\s+(.+)$', line)
        if match:
            packages += match.group(1).split()
    return packages


def test_the_readme_names_every_package_make_test_installs():
    packages = _system_deps()
    assert {"dovecot-imapd", "dovecot-pop3d", "postgresql", "systemd", "prometheus"} <= set(
        packages)
    readme = (ROOT / "README.md").read_text()
    assert [] == [p for p in packages if f"`{p}`" not in readme]


def test_the_readme_shows_the_grafana_dashboard():
    readme = (ROOT / "README.md").read_text()
    assert (ROOT / "grafana" / "outagewatch.json").is_file()
    assert "grafana/outagewatch.json" in readme
    assert re.search(r"Dashboards → (New → )?Import", readme)
    assert "Prometheus data source" in readme


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target)
PATH = re.compile(r"`((?:\.\./|/)[\w./-]+\.(?:md|py|ya?ml|json|sh))`")  # a `../path` in text


@pytest.mark.parametrize("doc", ["README.md", "CONTRIBUTING.md", "CHANGELOG.md",
                                 *[f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")]])
def test_docs_link_nothing_outside_the_repository(doc):
    path = ROOT / doc
    if not path.exists():
        pytest.skip(f"no {doc}")
    outside = []
    text = path.read_text()
    for target in LINK.findall(text) + PATH.findall(text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or an anchor
        file = target.split("#", 1)[0]
        resolved = (path.parent / file).resolve()
        if file.startswith("/") or not resolved.is_relative_to(ROOT) or not resolved.exists():
            outside.append(target)
    assert [] == outside

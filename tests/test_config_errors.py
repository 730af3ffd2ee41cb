"""Configuration errors as an operator reads them (issue 12): our words with an example,
targets by name, a default's problem once, "did you mean", and what came from the
environment."""

from __future__ import annotations

import json

import pytest

from outagewatch.config import load_settings
from outagewatch.errors import ConfigError

WEB = "{name: web, platform: eu, type: http, url: 'http://x/'}"
BASE = f"platforms: {{eu: {{}}}}\ntargets:\n  - {WEB}\n"


def problems(tmp_path, text: str) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return info.value.problems


# One row per error type pydantic produces for our models: the config and its one line.
WORDING = [
    ("list_type", "platforms: {eu: {}}\ntargets: {name: a}\n",
     ('targets: expected a list of targets, e.g. "targets: [{name: imap-eu, platform: eu, '
     'type: imap, host: imap.example.com, username: probe}]", not a mapping')),
    ("model_attributes_type", "platforms: {eu: {}}\ntargets: [a]\n",
     ('targets[0]: expected a target (key: value pairs), e.g. "- {name: imap-eu, platform: eu, '
     "type: imap, host: imap.example.com, username: probe}\", not 'a'")),
    ("dict_type", f"platforms: [eu]\ntargets: [{WEB}]\n",
     ('platforms: expected a mapping of platforms by name, e.g. "platforms: {eu: '
     '{incident_recipients: [noc@example.com]}}", not a list')),
    ("model_type", "server: x\n" + BASE,
     ('server: expected a section (key: value pairs), e.g. "server: {listen: '
     "127.0.0.1:9817}\", not 'x'")),
    ("model_type of nothing", "platforms: {eu: }\n" + f"targets: [{WEB}]\n",
     ('platforms.eu: is empty: give its keys, or {} for the defaults, e.g. "eu: '
     '{incident_recipients: [noc@example.com], info_recipients: [info@example.com]}"')),
    ("too_short", "platforms: {eu: {}}\ntargets: []\n",
     ('targets: must not be empty: expected a list of targets with at least one entry, e.g. '
     '"targets: [{name: imap-eu, platform: eu, type: imap, host: imap.example.com, '
     'username: probe}]"')),
    ("missing", "platforms: {eu: {}}\ntargets: [{name: a, platform: eu, type: http}]\n",
     "targets[a].url: required key is missing (e.g. url: https://webmail.example.com/)"),
    ("int_parsing", "defaults: {recover_after: x}\n" + BASE,
     "defaults.recover_after: expected a whole number, e.g. 2, not 'x'"),
    ("int_from_float", "engine: {max_in_flight: 1.5}\n" + BASE,
     "engine.max_in_flight: expected a whole number, e.g. 512, not 1.5"),
    ("int_type", ("platforms: {eu: {}}\ntargets: [{name: a, platform: eu, type: http, "
     "url: 'http://x/', max_redirects: [1]}]\n"),
     "targets[a].max_redirects: expected a whole number, e.g. 5, not a list"),
    ("greater_than_equal", "defaults: {recover_after: 0}\n" + BASE,
     "defaults.recover_after: must be at least 1, not 0"),
    ("less_than_equal", ("platforms: {eu: {}}\ntargets: [{name: a, platform: eu, type: imap, "
     "host: h, username: u, port: 99999}]\n"),
     "targets[a].port: must be at most 65535, not 99999"),
    ("bool_parsing", "engine: {uvloop: maybe}\n" + BASE,
     "engine.uvloop: expected true or false, not 'maybe'"),
    ("string_type", ("platforms: {eu: {}}\ntargets: [{name: 5, platform: eu, type: http, "
     "url: 'http://x/'}]\n"),
     'targets[0].name: expected text, not 5: put it in quotes ("5")'),
    ("string_type of a secret", ("platforms: {eu: {}}\ntargets: [{name: a, platform: eu, "
     "type: pop3, host: h, username: u, password: 918273}]\n"),
     "targets[a].password: expected text, not what was given"),
    ("string_pattern_mismatch", ("platforms: {eu: {}}\ntargets: [{name: Web Mail, "
     "platform: eu, type: http, url: 'http://x/'}]\n"),
     ("targets[0].name: must be lower-case letters, digits, '.', '_' and '-' only, "
     "e.g. imap-eu; not 'Web Mail'")),
    ("string_pattern_mismatch of a key", ("platforms: {EU: {}}\ntargets: [{name: a, "
     "platform: EU, type: http, url: 'http://x/'}]\n"),
     ("platforms.EU: the name must be lower-case letters, digits, '.', '_' and '-' only, "
     "e.g. eu; not 'EU'")),
    ("string_too_short", ("platforms: {eu: {}}\ntargets: [{name: a, platform: eu, type: smtp, "
     "host: ''}]\n"), "targets[a].host: must not be empty"),
    ("literal_error", ("platforms: {eu: {}}\ntargets: [{name: a, platform: eu, type: smtp, "
     "host: h, tls: ssl}]\n"),
     "targets[a].tls: must be one of none, starttls, implicit; not 'ssl'"),
    ("date_from_datetime_parsing", ("platforms: {eu: {calendar: {closures: [tomorrow]}}}\n"
     f"targets: [{WEB}]\n"),
     "platforms.eu.calendar.closures[0]: expected a date, e.g. 2026-12-24; not 'tomorrow'"),
    ("datetime_from_date_parsing", BASE + "maintenance: {windows: [{id: w, platform: eu, "
     "start: soon, end: '2026-12-01T00:00:00Z'}]}\n",
     ("maintenance.windows[0].start: expected a date and time with a time zone, e.g. "
     "2026-12-28T22:00:00+01:00; not 'soon'")),
    ("timezone_aware", BASE + "maintenance: {windows: [{id: w, platform: eu, "
     "start: '2026-12-28T22:00:00', end: '2026-12-29T00:00:00Z'}]}\n",
     ("maintenance.windows[0].start: needs a time zone, e.g. 2026-12-28T22:00:00+01:00 or "
     "2026-12-28T21:00:00Z; not '2026-12-28T22:00:00'")),
    ("path_type", BASE + "state: {path: 5}\n",
     "state.path: expected a file path, e.g. /var/lib/outagewatch/state.db; not 5"),
    ("union_tag_invalid", "platforms: {eu: {}}\ntargets: [{name: a, platform: eu, type: ftp}]\n",
     "targets[a].type: must be one of http, imap, mailloop, pop3, smtp; not 'ftp'"),
    ("extra_forbidden", BASE + "notfy: {}\n", "notfy: unknown key; did you mean notify?"),
    ("invalid YAML date", ("platforms: {eu: {calendar: {closures: [2026-13-01]}}}\n"
     f"targets: [{WEB}]\n"), "{file}: invalid YAML: month must be in 1..12"),
]


@pytest.mark.parametrize(("kind", "text", "expected"), WORDING, ids=[w[0] for w in WORDING])
def test_our_wording_with_an_example(tmp_path, kind, text, expected):
    """Each error type pydantic produces for our models reads as one line in our words
    (never "Input should be ..."), says what is expected and shows an example."""
    del kind
    lines = problems(tmp_path, text)
    assert [expected.replace("{file}", str(tmp_path / "c.yaml"))] == lines
    assert not any(p in lines[0] for p in ("Input should", "String should", "Field required"))


def test_a_secret_is_never_echoed(tmp_path):
    """A wrong value is quoted back, except in a password key."""
    lines = problems(tmp_path, "platforms: {eu: {}}\ntargets: [{name: a, platform: eu, "
                               "type: pop3, host: h, username: u, password: [hunter2]}]\n")
    assert "hunter2" not in " ".join(lines)


class TestDidYouMean:
    def test_unknown_keys_at_every_level(self, tmp_path):
        """The nearest key the model knows at that place: a section, a platform's key, a
        target's key by its type."""
        assert ["defaults.treshold: unknown key; did you mean threshold?",
                ("platforms.eu.incident_recipient: unknown key; did you mean "
                "incident_recipients?"),
                "targets[a].mailbx: unknown key; did you mean mailbox?"] == problems(
            tmp_path, "defaults: {treshold: 5s}\n"
                      "platforms: {eu: {incident_recipient: [a@example.com]}}\n"
                      "targets: [{name: a, platform: eu, type: imap, host: h, username: u, "
                      "mailbx: INBOX}]\n")

    def test_nothing_near_says_only_unknown(self, tmp_path):
        assert ["targets[web].colour: unknown key"] == problems(
            tmp_path, BASE.replace("url: 'http://x/'", "url: 'http://x/', colour: red"))


class TestTargetsByName:
    def test_a_target_is_named_not_numbered(self, tmp_path):
        """Issue 12: targets[imap-eu].password_env, not targets[6].password_env."""
        many = "\n".join(f"  - {{name: w{i}, platform: eu, type: http, url: 'http://x/'}}"
                         for i in range(6))
        lines = problems(tmp_path, "platforms: {eu: {}}\ntargets:\n" + many + "\n"
                         "  - {name: imap-eu, platform: eu, type: imap, host: h, username: u,"
                         " password_env: OW_TEST_NOT_SET}\n")
        assert [("targets[imap-eu].password_env: environment variable OW_TEST_NOT_SET is "
                "not set")] == lines

    def test_index_when_the_name_is_unusable(self, tmp_path):
        """No name, a bad name or a shared name: the index."""
        lines = problems(tmp_path, "platforms: {eu: {}}\ntargets:\n"
                         "  - {platform: eu, type: http, url: 'http://x/'}\n"
                         "  - {name: dup, platform: eu, type: http, url: 'ftp://x/'}\n"
                         "  - {name: dup, platform: eu, type: http, url: 'http://x/'}\n")
        assert ["targets[0].name: required key is missing (e.g. name: imap-eu)",
                "targets[1].url: expected an http:// or https:// URL with a host"] == lines


class TestDefaultsOnce:
    def test_a_bad_default_is_reported_once_where_it_was_written(self, tmp_path):
        """A defaults.timeout not above defaults.threshold is one line at defaults, however
        many targets inherit it; a target that sets its own timeout is named."""
        targets = "\n".join(f"  - {{name: w{i}, platform: eu, type: http, url: 'http://x/'}}"
                            for i in range(5))
        lines = problems(tmp_path, "defaults: {timeout: 20s}\nplatforms: {eu: {}}\ntargets:\n"
                         + targets + "\n  - {name: own, platform: eu, type: http, "
                         "url: 'http://x/', timeout: 10s, threshold: 12s}\n")
        assert [("defaults.timeout: must be greater than defaults.threshold (30s) so that a "
                "slow answer is measured, not cut off"),
                ("targets[own].timeout: must be greater than threshold (12s) so that a slow "
                "answer is measured, not cut off")] == lines

    def test_a_target_that_sets_only_the_other_value(self, tmp_path):
        lines = problems(tmp_path, BASE.replace("url: 'http://x/'",
                                                "url: 'http://x/', threshold: 40s"))
        assert [("targets[web].threshold: must be less than timeout (35s, from defaults) so "
                "that a slow answer is measured, not cut off")] == lines


class TestEnvironment:
    def write(self, tmp_path):
        path = tmp_path / "c.yaml"
        path.write_text(BASE)
        return path

    def test_a_misspelt_section_is_an_error(self, tmp_path, monkeypatch):
        """OUTAGEWATCH_DEFAULT__THRESHOLD was silently ignored."""
        monkeypatch.setenv("OUTAGEWATCH_DEFAULT__THRESHOLD", "20s")
        with pytest.raises(ConfigError) as info:
            load_settings(self.write(tmp_path))
        assert [("OUTAGEWATCH_DEFAULT__THRESHOLD (environment): no section 'default'; did you "
                "mean OUTAGEWATCH_DEFAULTS__THRESHOLD?")] == info.value.problems

    def test_a_section_nothing_resembles_lists_the_sections(self, tmp_path, monkeypatch):
        monkeypatch.setenv("OUTAGEWATCH_XYZZY__KEY", "1")
        with pytest.raises(ConfigError) as info:
            load_settings(self.write(tmp_path))
        assert [("OUTAGEWATCH_XYZZY__KEY (environment): no section 'xyzzy'; sections: server, "
                "defaults, engine, platforms, targets, notify, maintenance, report, state, "
                "cluster")] == info.value.problems

    def test_an_error_says_it_came_from_the_environment(self, tmp_path, monkeypatch):
        monkeypatch.setenv("OUTAGEWATCH_DEFAULTS__THRESHOLD", "fast")
        monkeypatch.setenv("OUTAGEWATCH_TARGETS", '[{"name": "j", "platform": "eu", '
                                                  '"type": "http", "url": "ftp://x/"}]')
        with pytest.raises(ConfigError) as info:
            load_settings(self.write(tmp_path))
        assert [("defaults.threshold (from OUTAGEWATCH_DEFAULTS__THRESHOLD): invalid duration "
                "'fast': use e.g. 30s, 15m, 1h30m, 500ms or PT15M"),
                ("targets[j].url (from OUTAGEWATCH_TARGETS): expected an http:// or https:// "
                "URL with a host")] == info.value.problems

    def test_a_default_from_the_environment_checked_against_targets(self, tmp_path,
                                                                   monkeypatch):
        monkeypatch.setenv("OUTAGEWATCH_DEFAULTS__TIMEOUT", "10s")
        with pytest.raises(ConfigError) as info:
            load_settings(self.write(tmp_path))
        assert [("defaults.timeout (from OUTAGEWATCH_DEFAULTS__TIMEOUT): must be greater than "
                "defaults.threshold (30s) so that a slow answer is measured, not cut off")] == (
            info.value.problems)

    def test_variables_that_are_no_settings_pass(self, tmp_path, monkeypatch):
        """OUTAGEWATCH_CONFIG, _URL, _TOKEN and a password variable named by password_env
        (even one written like a nested setting) are not flagged."""
        for name in ("OUTAGEWATCH_CONFIG", "OUTAGEWATCH_URL", "OUTAGEWATCH_TOKEN",
                     "OUTAGEWATCH_IMAP_PASSWORD"):
            monkeypatch.setenv(name, "x")
        monkeypatch.setenv("OUTAGEWATCH_PROBE__PW", "s3cret")
        path = tmp_path / "c.yaml"
        path.write_text(BASE + "  - {name: i, platform: eu, type: imap, host: h, username: u,"
                               " password_env: OUTAGEWATCH_PROBE__PW}\n")
        settings = load_settings(path)
        assert "s3cret" == getattr(settings.targets[1], "secret")()  # noqa: B009


class TestOnlyTargets:
    CONFIG = ("platforms: {eu: {}}\ntargets:\n"
              "  - {name: imap-eu, platform: eu, type: imap, host: h, username: u,"
              " password_file: '{secret}'}\n"
              "  - {name: pop3-eu, platform: eu, type: pop3, host: h, username: u,"
              " password_file: /nonexistent/pop3}\n"
              "  - {name: smtp-eu, platform: eu, type: smtp, host: h, username: u,"
              " password_env: OW_TEST_NOT_SET}\n")

    def test_only_the_selected_targets_need_their_secrets(self, tmp_path, monkeypatch):
        """probe -t imap-eu needs imap-eu's password, not the others'."""
        monkeypatch.delenv("OW_TEST_NOT_SET", raising=False)
        secret = tmp_path / "imap"
        secret.write_text("pw\n")
        path = tmp_path / "c.yaml"
        path.write_text(self.CONFIG.replace("{secret}", str(secret)))
        settings = load_settings(path, only_targets={"imap-eu"})
        imap, pop3, smtp = settings.targets
        assert ("pw", None, None) == (getattr(imap, "secret")(), getattr(pop3, "secret")(),  # noqa: B009
                                      getattr(smtp, "secret")())  # noqa: B009
        with pytest.raises(ConfigError) as info:
            load_settings(path)
        assert [("targets[pop3-eu].password_file: cannot read '/nonexistent/pop3': No such "
                "file or directory"),
                ("targets[smtp-eu].password_env: environment variable OW_TEST_NOT_SET is not "
                "set")] == info.value.problems

    def test_a_selected_target_still_needs_its_secret(self, tmp_path, monkeypatch):
        monkeypatch.delenv("OW_TEST_NOT_SET", raising=False)
        path = tmp_path / "c.yaml"
        path.write_text(self.CONFIG.replace("{secret}", "/nonexistent/imap"))
        with pytest.raises(ConfigError) as info:
            load_settings(path, only_targets={"smtp-eu"})
        assert [("targets[smtp-eu].password_env: environment variable OW_TEST_NOT_SET is not "
                "set")] == info.value.problems


async def test_probe_one_target_needs_only_its_secrets(tmp_path, http_server, monkeypatch):
    """Issue 12: `outagewatch probe -t NAME` failed on another target's missing password
    file; it needs only the selected targets' secrets (not the others', the relay's or the
    API token). Without -t every target's are needed; the rest still, as the file is whole."""
    from tests.test_cli import outagewatch

    monkeypatch.delenv("OW_TEST_NOT_SET", raising=False)
    path = tmp_path / "c.yaml"
    path.write_text(
        "platforms: {eu: {}}\ntargets:\n"
        f"  - {{name: web, platform: eu, type: http, url: 'http://127.0.0.1:{http_server.port}/'}}\n"
        "  - {name: imap-eu, platform: eu, type: imap, host: h, username: u,"
        " password_file: /nonexistent/imap}\n"
        "server: {token_file: /nonexistent/token}\n"
        "notify: {smtp: {host: relay, username: u, password_env: OW_TEST_NOT_SET},"
        " sender: noc@example.com}\n")
    code, out, err = await outagewatch("probe", "-t", "web", "--json", "-c", str(path))
    assert (0, "") == (code, err), err
    assert "web" == json.loads(out)["target"]
    code, _, err = await outagewatch("probe", "-c", str(path))
    assert 2 == code
    assert [("outagewatch: server.token_file: cannot read '/nonexistent/token': No such file "
            "or directory"),
            ("outagewatch: targets[imap-eu].password_file: cannot read '/nonexistent/imap': No "
             "such file or directory"),
            ("outagewatch: notify.smtp.password_env: environment variable OW_TEST_NOT_SET is "
             "not set")] == err.splitlines()

"""The configuration contract: bad files are fixtures paired with their exact messages."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from outagewatch.config import load_settings
from outagewatch.errors import ConfigError

DATA = Path(__file__).parent / "testdata" / "config"
INVALID = sorted(DATA.glob("invalid-*.yaml"))
EXAMPLE = Path(__file__).parents[1] / "config" / "outagewatch.example.yaml"


def expected_lines(path: Path) -> list[str]:
    return [
        line.removeprefix("# expect: ").replace("{file}", str(path))
        for line in path.read_text().splitlines()
        if line.startswith("# expect: ")
    ]


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_config_messages(path, monkeypatch):
    """Each invalid fixture fails with exactly the lines written in its header."""
    monkeypatch.delenv("OUTAGEWATCH_TEST_UNSET_VARIABLE", raising=False)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert expected_lines(path) == info.value.problems


def test_every_fixture_names_its_expectation():
    assert INVALID
    assert all(expected_lines(p) for p in INVALID)


class TestLoad:
    def test_minimal_defaults(self):
        """Defaults are the agreement's numbers: 30 s threshold, 15 min window."""
        settings = load_settings(DATA / "valid-minimal.yaml")
        rule = settings.rule_for(settings.targets[0])
        assert (60.0, 35.0, 30.0, 900.0, 2) == (
            rule.interval, rule.timeout, rule.threshold, rule.window, rule.recover_after)
        assert "127.0.0.1:9817" == settings.server.listen

    def test_missing_file(self, tmp_path):
        with pytest.raises(ConfigError) as info:
            load_settings(tmp_path / "nope.yaml")
        assert [f"{tmp_path / 'nope.yaml'}: file not found"] == info.value.problems

    def test_env_overrides_nested_keys(self, monkeypatch):
        """OUTAGEWATCH_SECTION__KEY overrides one key and leaves its siblings alone."""
        monkeypatch.setenv("OUTAGEWATCH_DEFAULTS__THRESHOLD", "900")  # env values are strings
        monkeypatch.setenv("OUTAGEWATCH_DEFAULTS__TIMEOUT", "16m")
        monkeypatch.setenv("OUTAGEWATCH_SERVER__LISTEN", "0.0.0.0:9999")
        settings = load_settings(DATA / "valid-minimal.yaml")
        assert timedelta(minutes=15) == settings.defaults.threshold
        assert timedelta(minutes=16) == settings.defaults.timeout
        assert timedelta(minutes=15) == settings.defaults.window
        assert 9999 == settings.server.port

    def test_env_override_is_validated(self, monkeypatch):
        monkeypatch.setenv("OUTAGEWATCH_DEFAULTS__WINDOW", "soon")
        with pytest.raises(ConfigError) as info:
            load_settings(DATA / "valid-minimal.yaml")
        assert [("defaults.window (from OUTAGEWATCH_DEFAULTS__WINDOW): invalid duration "
                 "'soon': use e.g. 30s, 15m, 1h30m, 500ms or PT15M")] == info.value.problems

    def test_env_typo_is_an_error(self, monkeypatch):
        """A misspelt nested override fails loudly instead of being ignored."""
        monkeypatch.setenv("OUTAGEWATCH_DEFAULTS__TRESHOLD", "20s")
        with pytest.raises(ConfigError) as info:
            load_settings(DATA / "valid-minimal.yaml")
        assert [("defaults.treshold (from OUTAGEWATCH_DEFAULTS__TRESHOLD): unknown key; did "
                 "you mean OUTAGEWATCH_DEFAULTS__THRESHOLD?")] == info.value.problems

    def test_per_target_overrides(self, tmp_path):
        path = tmp_path / "c.yaml"
        path.write_text(
            "defaults: {threshold: 10s, timeout: 12s}\nplatforms: {eu: {}}\ntargets:\n"
            "  - {name: a, platform: eu, type: http, url: 'http://x/', threshold: 1s,"
            " timeout: 2s, window: PT1M, interval: 1h30m, recover_after: 3}\n"
            "  - {name: b, platform: eu, type: http, url: 'http://y/'}\n")
        settings = load_settings(path)
        a, b = (settings.rule_for(t) for t in settings.targets)
        assert (5400.0, 2.0, 1.0, 60.0, 3) == (a.interval, a.timeout, a.threshold, a.window,
                                               a.recover_after)
        assert (12.0, 10.0) == (b.timeout, b.threshold)

    def test_password_sources(self, tmp_path, monkeypatch):
        """Passwords come from a file (trailing newline dropped) or a named variable, and
        never show in the model's repr."""
        secret = tmp_path / "secret"
        secret.write_text("from-file-pw\n")
        monkeypatch.setenv("PROBE_PW", "from-env-pw")
        path = tmp_path / "c.yaml"
        path.write_text(
            "platforms: {eu: {}}\ntargets:\n"
            f"  - {{name: a, platform: eu, type: pop3, host: h, username: u, "
            f"password_file: '{secret}'}}\n"
            "  - {name: b, platform: eu, type: imap, host: h, username: u,"
            " password_env: PROBE_PW}\n")
        settings = load_settings(path)
        assert ["from-file-pw", "from-env-pw"] == [getattr(t, "secret")()  # noqa: B009
                                                   for t in settings.targets]
        assert "from-file-pw" not in repr(settings)
        assert "from-env-pw" not in settings.model_dump_json()

    @pytest.mark.parametrize("section", ["server", "password"])
    def test_one_secret_resolver_for_tokens_and_passwords(self, tmp_path, monkeypatch,
                                                           section):
        """The operator token and the passwords follow the same rules: the file's content
        less its final line break, an empty file or variable is an error, one source only."""
        key = "token" if section == "server" else "password"

        def load(**sources):
            fields = ", ".join(f"{k}: '{v}'" for k, v in sources.items())
            where = (f"server: {{{fields}}}\n" if section == "server" else "")
            target = ("{name: a, platform: eu, type: pop3, host: h, username: u"
                      + ("" if section == "server" else f", {fields}") + "}")
            path = tmp_path / "c.yaml"
            path.write_text(f"{where}platforms: {{eu: {{}}}}\ntargets:\n  - {target}\n")
            settings = load_settings(path)
            secret = (settings.server.token if section == "server"
                      else getattr(settings.targets[0], "password"))  # noqa: B009
            assert secret is not None
            return secret.get_secret_value()

        secret = tmp_path / "secret"
        secret.write_text("  s3cret-0123456789abcdef \n")
        assert "  s3cret-0123456789abcdef " == load(**{f"{key}_file": secret})
        secret.write_text("\n")
        with pytest.raises(ConfigError, match=f"{key}_file: .* is empty"):
            load(**{f"{key}_file": secret})
        monkeypatch.setenv("OW_SECRET", "")
        with pytest.raises(ConfigError, match=f"{key}_env: environment variable OW_SECRET "
                                              "is empty"):
            load(**{f"{key}_env": "OW_SECRET"})
        monkeypatch.setenv("OW_SECRET", "s3cret-0123456789abcdef")
        with pytest.raises(ConfigError, match=f"give only one of {key}_file, {key}_env"):
            load(**{f"{key}_file": secret, f"{key}_env": "OW_SECRET"})

    def test_default_ports(self, tmp_path):
        path = tmp_path / "c.yaml"
        rows = [("smtp", "none", 25), ("smtp", "starttls", 587), ("smtp", "implicit", 465),
                ("imap", "starttls", 143), ("imap", "implicit", 993),
                ("pop3", "none", 110), ("pop3", "implicit", 995)]
        lines = [f"  - {{name: t{i}, platform: eu, type: {kind}, host: h, tls: {tls},"
                 f" username: u}}" for i, (kind, tls, _) in enumerate(rows)]
        path.write_text("platforms: {eu: {}}\ntargets:\n" + "\n".join(lines) + "\n")
        settings = load_settings(path)
        assert [p for _, _, p in rows] == [getattr(t, "effective_port")  # noqa: B009
                                           for t in settings.targets]

    def test_example_is_valid_once_its_secrets_exist(self, tmp_path, monkeypatch):
        """The documented example config, with its secret files present, loads cleanly."""
        for name in ("imap-probe", "pop3-probe", "relay"):
            (tmp_path / name).write_text("pw")
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
        monkeypatch.setenv("SMTP_PROBE_PASSWORD", "pw")
        settings = load_settings(EXAMPLE)
        assert ["webmail-eu", "smtp-eu", "imap-eu", "pop3-eu"] == [
            t.name for t in settings.targets]


def test_reference_is_current():
    """docs/configuration.md is exactly what `outagewatch config-schema` prints: regenerate
    it (outagewatch config-schema > docs/configuration.md) when the models change."""
    from outagewatch.reference import config_reference

    committed = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    assert config_reference() == committed
    assert "`targets[].expect_body`" in committed
    assert "`maintenance.windows[].kind`" in committed


class TestCluster:
    def write(self, tmp_path: Path, extra: str) -> Path:
        path = tmp_path / "c.yaml"
        path.write_text("platforms: {eu: {}}\n"
                        "targets:\n"
                        "  - {name: web, platform: eu, type: http, url: 'http://x/'}\n"
                        "  - {name: mx, platform: eu, type: smtp, host: mx, locations: [ams]}\n"
                        + extra)
        return path

    def test_defaults_a_majority_and_the_node_as_its_location(self, tmp_path, monkeypatch):
        (tmp_path / "db").write_text("s3cret\n")
        monkeypatch.setattr("socket.gethostname", lambda: "Fra-1.example.net")
        settings = load_settings(self.write(tmp_path, (
            f"state: {{url: 'postgresql://ow@db:5432/ow', password_file: '{tmp_path}/db'}}\n"
            "cluster: {locations: [fra-1, ams, nyc]}\n")))
        cluster = settings.cluster
        assert cluster is not None
        assert ("Fra-1", "fra-1", 2, timedelta(seconds=15)) == (
            cluster.node, cluster.location, cluster.quorum, cluster.lease)
        assert "s3cret" == settings.state.secret()
        assert "s3cret" not in repr(settings.state)
        assert "db:5432/ow" == settings.state.where
        web, mx = settings.targets
        assert (("fra-1", "ams", "nyc"), 2) == (settings.locations_of(web),
                                                settings.quorum_for(web))
        assert (("ams",), 1) == (settings.locations_of(mx), settings.quorum_for(mx))

    def test_one_node_has_one_nameless_location(self):
        settings = load_settings(DATA / "valid-minimal.yaml")
        target = settings.targets[0]
        assert (None, ("",), 1) == (settings.cluster, settings.locations_of(target),
                                    settings.quorum_for(target))

    def test_an_inline_database_password_is_refused(self, tmp_path):
        with pytest.raises(ConfigError) as info:
            load_settings(self.write(tmp_path, (
                "state: {url: 'postgresql://ow@db/ow', password: x}\n"
                "cluster: {location: a}\n")))
        expected = "state.password: never in the config file; use password_file or password_env"
        assert [expected] == info.value.problems

"""The command line as a user meets it: exit codes, one-line errors, probe output."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys

import pytest
from tests.helpers.daemon import config_text
from tests.helpers.ports import free_port
from tests.helpers.scripted import Scripted


async def outagewatch(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    import os

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "outagewatch", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


NOTIFY = "notify: {smtp: {host: relay.example.com}, sender: 'NOC <noc@example.com>'}\n"


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


class TestCheckConfig:
    async def test_ok(self, tmp_path):
        path = write(tmp_path, config_text(9817, [("{name: w, platform: eu, type: http,"
                                                  " url: 'http://x/'}")], extra=NOTIFY))
        assert (0, "ok\n", "") == await outagewatch("check-config", "-c", str(path))

    async def test_problems_one_per_line_exit_2(self, tmp_path):
        path = write(tmp_path, "platforms: {eu: {}}\ntargets:\n"
                               "  - {name: w, platform: eu, type: http, url: 'ftp://x/'}\n"
                               "  - {name: i, platform: eu, type: imap, host: h, port: 0}\n")
        code, out, err = await outagewatch("check-config", "-c", str(path))
        assert 2 == code
        assert ["targets[w].url: expected an http:// or https:// URL with a host",
                "targets[i].username: required key is missing (e.g. username: probe@example.com)",
                "targets[i].port: must be at least 1, not 0"] == out.splitlines()
        assert "Traceback" not in err

    async def test_config_from_environment(self, tmp_path):
        path = write(tmp_path, config_text(9817, [("{name: w, platform: eu, type: http,"
                                                  " url: 'http://x/'}")], extra=NOTIFY))
        code, out, _ = await outagewatch("check-config", env={"OUTAGEWATCH_CONFIG": str(path)})
        assert (0, "ok\n") == (code, out)


    async def test_a_broken_json_variable_is_one_line(self, tmp_path):
        """Issue 10.17: a section given as broken JSON in the environment is one line that
        names the variable, exit 2 (a traceback and exit 1 before)."""
        path = write(tmp_path, config_text(9817, [("{name: w, platform: eu, type: http,"
                                                  " url: 'http://x/'}")]))
        code, out, err = await outagewatch("check-config", "-c", str(path),
                                           env={"OUTAGEWATCH_SERVER": '{"listen": '})
        assert 2 == code
        expected = ("OUTAGEWATCH_SERVER (environment): not valid JSON for a section; set one key "
                    "with OUTAGEWATCH_SERVER__KEY=value, or give the whole section as JSON")
        assert [expected] == out.splitlines()
        assert "Traceback" not in err

    async def test_a_huge_file_is_refused_at_once(self, tmp_path):
        """A 20 MB file froze the daemon for 9 s on reload: refused before it is parsed."""
        path = tmp_path / "huge.yaml"
        path.write_text("# padding\n" * 2_000_000)
        code, out, _ = await outagewatch("check-config", "-c", str(path))
        assert (2, [f"{path}: larger than 4 MiB: not a configuration"]) == (
            code, out.splitlines())


class TestUsageErrors:
    @pytest.mark.parametrize(("args", "needle"), [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["probe", "--bogus"], "unrecognized arguments: --bogus"),
        (["--log-level", "loud", "run"], "invalid choice: 'loud'"),
        (["run"], "no configuration: pass -c FILE or set OUTAGEWATCH_CONFIG"),
        (["run", "-c", "/nonexistent.yaml"], "/nonexistent.yaml: file not found"),
    ])
    async def test_one_line_exit_2(self, args, needle):
        code, _out, err = await outagewatch(*args, env={"OUTAGEWATCH_CONFIG": ""})
        assert 2 == code
        assert 1 == len(err.strip().splitlines()), err
        assert needle in err

    async def test_unknown_target(self, tmp_path):
        path = write(tmp_path, config_text(9817, [("{name: w, platform: eu, type: http,"
                                                  " url: 'http://x/'}")]))
        code, _, err = await outagewatch("probe", "-c", str(path), "-t", "nope")
        assert (2, "outagewatch: unknown target nope (known: w)\n") == (code, err)

    async def test_port_in_use(self, tmp_path):
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            path = write(tmp_path, config_text(port, [("{name: w, platform: eu, type: http,"
                                                      " url: 'http://127.0.0.1:1/'}")]))
            code, _, err = await outagewatch("run", "-c", str(path))
        assert 2 == code
        assert f"outagewatch: cannot listen on 127.0.0.1:{port}: address already in use" \
            in err.lower()
        assert "Traceback" not in err


class TestProbeCommand:
    async def test_table_and_exit_codes(self, tmp_path, http_server):
        """All good: exit 0 and a table; one target failing or slow: exit 1."""
        url = f"http://127.0.0.1:{http_server.port}"
        path = write(tmp_path, config_text(9817, [
            f"{{name: good, platform: eu, type: http, url: '{url}/'}}",
            f"{{name: slow, platform: eu, type: http, url: '{url}/slow?s=1.2'}}",
            f"{{name: broken, platform: eu, type: http, url: '{url}/status/500'}}",
        ]))
        code, out, _ = await outagewatch("probe", "-c", str(path), "-t", "good")
        assert 0 == code
        assert out.splitlines()[0].split() == ["TARGET", "TYPE", "RESULT", "TIME", "PHASES",
                                               "DETAIL"]
        assert out.splitlines()[1].split()[:3] == ["good", "http", "ok"]
        code, out, _ = await outagewatch("probe", "-c", str(path))
        assert 1 == code
        rows = {line.split()[0]: line.split()[2] for line in out.splitlines()[1:]}
        assert {"good": "ok", "slow": "SLOW", "broken": "status"} == rows

    async def test_json_lines(self, tmp_path, dovecot, tls_files):
        path = write(tmp_path, config_text(9817, [
            (f"{{name: pop, platform: eu, type: pop3, host: localhost, port: {dovecot.pop3},"
            f" username: {dovecot.user}, password_env: PW, ca_file: '{tls_files['ca']}'}}"),
        ]))
        code, out, _ = await outagewatch("probe", "-c", str(path), "--json",
                                         env={"PW": dovecot.password})
        assert 0 == code
        (record,) = [json.loads(line) for line in out.splitlines()]
        assert ("pop", "pop3", "ok", False) == (record["target"], record["type"],
                                                record["result"], record["bad"])
        assert {"greeting", "starttls", "login", "stat", "logout"} <= set(record["phases_s"])
        assert record["duration_s"] > 0
        # issue 12: one time format for machines, ISO 8601 UTC
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["cert_expiry"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z", record["started_at"])

    @pytest.mark.parametrize("as_json", [False, True])
    async def test_results_print_as_they_finish(self, tmp_path, http_server, as_json):
        """Issue 12: a fast target's result is printed while a hung one is still running
        (nothing for 35 s, then the whole table before), in fixed columns."""

        async def silent(reader, _writer):
            await reader.read()  # accepts, never greets: the probe runs to its deadline

        async with Scripted(silent) as hung:
            path = write(tmp_path, config_text(9817, [
                (f"{{name: hung-smtp-server, platform: eu, type: smtp, host: 127.0.0.1,"
                 f" port: {hung.port}, tls: none}}"),
                f"{{name: w, platform: eu, type: http, url: 'http://127.0.0.1:{http_server.port}/'}}",
            ], timeout="3s"))
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "outagewatch", "probe", "-c", str(path),
                *(["--json"] if as_json else []),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            assert process.stdout is not None
            loop = asyncio.get_running_loop()
            lines = []
            while line := await asyncio.wait_for(process.stdout.readline(), 30):
                lines.append((loop.time(), line.decode().rstrip("\n")))
            assert 1 == await process.wait()
        rows = lines if as_json else lines[1:]
        names = [(json.loads(text)["target"] if as_json else text.split()[0])
                 for _, text in rows]
        assert ["w", "hung-smtp-server"] == names, "in finishing order"
        (fast_at, _), (slow_at, _) = rows
        assert slow_at - fast_at > 1.5, "the fast result came long before the deadline's"
        if not as_json:
            header, fast, slow = (text for _, text in lines)
            for column in ("TYPE", "RESULT", "TIME", "PHASES", "DETAIL"):
                at = header.index(column)
                for row in (fast, slow):
                    assert (row[at - 2:at] == "  " and row[at] != " ") or len(row) <= at, column
            assert "greeting: no answer within the 3s deadline" in slow

    async def test_uvloop_switch(self, tmp_path, http_server):
        """engine.uvloop runs the same probes on uvloop."""
        path = write(tmp_path, config_text(9817, [
            f"{{name: w, platform: eu, type: http, url: 'http://127.0.0.1:{http_server.port}/'}}",
        ]) + "engine: {uvloop: true}\n")
        code, out, err = await outagewatch("probe", "-c", str(path), "--json")
        assert 0 == code, err
        assert "ok" == json.loads(out)["result"]


class TestMaintenanceCommands:
    """Issue 12, against the real daemon: ``--url`` without a scheme, ids in any case, and
    ``update`` that changes only what it is given."""

    async def test_url_ids_and_partial_update(self, tmp_path, http_server, relay):
        from datetime import UTC, datetime, timedelta

        from tests.helpers.daemon import DaemonProcess

        def iso(minutes):
            return (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat()

        port = free_port()
        token = "operator-token-0123456789abcdef"
        notify = (f"notify: {{smtp: {{host: 127.0.0.1, port: {relay.port}, tls: none}},"
                  " sender: 'NOC <noc@example.com>'}\n")
        path = write(tmp_path, config_text(port, [
            f"{{name: w, platform: eu, type: http, url: 'http://127.0.0.1:{http_server.port}/'}}",
        ], state=tmp_path / "state.db", extra=notify, server="token_env: OW_TOKEN"))
        daemon = await DaemonProcess(path, env={"OW_TOKEN": token}).start(port)
        env = {"OUTAGEWATCH_TOKEN": token, "OUTAGEWATCH_URL": ""}
        url = ["--url", f"127.0.0.1:{port}", "--json"]  # no scheme: http:// it is
        try:
            start, end = iso(60), iso(90)
            code, out, err = await outagewatch(
                "maintenance", "add", "--id", "DB-Upgrade", "--platform", "eu", "--start",
                start, "--end", end, "--emergency", *url, env=env)
            assert (0, "") == (code, err)
            added = json.loads(out)
            assert "db-upgrade" == added["id"]
            code, out, err = await outagewatch("maintenance", "show", "DB-UPGRADE", *url,
                                               env=env)
            assert (0, "db-upgrade") == (code, json.loads(out)["id"]), err
            later = iso(120)
            code, out, err = await outagewatch("maintenance", "update", "Db-Upgrade",
                                               "--end", later, *url, env=env)
            assert 0 == code, err
            moved = json.loads(out)
            assert added["start"] == moved["start"], "the start stays"
            assert moved["end"] != added["end"]
            earlier = iso(45)
            code, out, err = await outagewatch("maintenance", "update", "db-upgrade",
                                               "--start", earlier, *url, env=env)
            assert 0 == code, err
            assert moved["end"] == json.loads(out)["end"], "the end stays"
            code, _, err = await outagewatch("maintenance", "update", "db-upgrade", *url,
                                             env=env)
            assert (2, "outagewatch: maintenance update: give --start, --end or both\n") \
                == (code, err)
            code, out, err = await outagewatch("maintenance", "cancel", "DB-UPGRADE", *url,
                                               env=env)
            assert (0, "cancelled") == (code, json.loads(out)["state"]), err
        finally:
            await daemon.stop()


@pytest.mark.parametrize("flag", ["--version", "-V"])
async def test_version(flag):
    code, out, _ = await outagewatch(flag)
    assert 0 == code
    assert out.startswith("outagewatch ")


def _every_parser(parser, prog=()):
    """The parser and each (sub)command's, depth first, with the words that reach it."""
    import argparse

    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _every_parser(sub, (*prog, name))


class TestHelp:
    """Issue 12: an operator learns the CLI from --help: every option with help (its format
    and an example), each command's exit codes, and no reST markup."""

    def test_every_option_of_every_command_has_help(self):
        from outagewatch.cli import _parser

        missing, markup, no_exits = [], [], []
        parsers = list(_every_parser(_parser()))
        assert len(parsers) > 15  # walked into maintenance, incident, cluster ...
        for words, parser in parsers:
            for action in parser._actions:
                name = "/".join(action.option_strings) or action.dest
                if action.dest not in {"help", "command", "action"} and not action.help:
                    missing.append(f"{' '.join(words)} {name}")
            text = parser.format_help()
            if "``" in text or ":ref:" in text or ".. " in text:
                markup.append(" ".join(words))
            if "exit status: 0" not in text:
                no_exits.append(" ".join(words) or "outagewatch")
        assert [] == missing
        assert [] == markup
        assert [] == no_exits

    async def test_times_are_explained_with_an_example(self):
        code, out, _ = await outagewatch("maintenance", "add", "--help")
        assert 0 == code
        assert "ISO 8601 with a zone, e.g. 2026-12-16T03:00:00+01:00" in " ".join(out.split())

    async def test_top_level_help_has_no_markup(self):
        code, out, _ = await outagewatch("--help")
        assert 0 == code
        assert "``" not in out
        assert "exit status: 0" in out
        code, out, _ = await outagewatch("probe", "--help")
        assert "1 a probe BAD" in " ".join(out.split())


_ = free_port


async def test_config_schema():
    code, out, _ = await outagewatch("config-schema")
    assert 0 == code
    assert out.startswith("# Configuration reference")


def test_a_reader_that_stops_early_is_no_traceback():
    """``outagewatch incident list | head -3`` ended in a BrokenPipeError traceback."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        done = subprocess.run([sys.executable, "-m", "outagewatch", "config-schema"],
                              stdout=write, stderr=subprocess.PIPE, timeout=60, check=False)
    finally:
        os.close(write)
    assert (done.returncode, b"Traceback" in done.stderr) == (0, False), done.stderr

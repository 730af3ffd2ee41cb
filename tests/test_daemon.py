"""``outagewatch run`` as a real process against real servers: metrics, health, signals."""

from __future__ import annotations

import asyncio
import signal
import sys

from tests.helpers.daemon import DaemonProcess, config_text, free_port
from tests.helpers.smtpd import PASSWORD as SMTP_PASSWORD


def metric_lines(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith((name + "{", name + " "))]


class TestDaemon:
    async def test_probes_on_schedule_and_exports_metrics(self, tmp_path, http_server, dovecot,
                                                          tls_files):
        """The daemon probes every target on its interval and /metrics shows each target's
        success, duration histogram, phases and result counters with the agreed names."""
        port = free_port()
        ca = tls_files["ca"]
        config = tmp_path / "c.yaml"
        config.write_text(config_text(port, [
            f"{{name: web, platform: eu, type: http, url: 'http://127.0.0.1:{http_server.port}/'}}",
            (f"{{name: imap, platform: eu, type: imap, host: localhost, port: {dovecot.imap},"
            f" username: {dovecot.user}, password_env: IMAP_PW, ca_file: '{ca}'}}"),
        ]))
        daemon = await DaemonProcess(config, env={"IMAP_PW": dovecot.password}).start(port)
        try:
            async def both_probed_twice():
                text = await daemon.metrics()
                counts = [line for line in metric_lines(text, "outagewatch_probes_total")
                          if 'result="ok"' in line and not line.endswith(" 0.0")]
                return len(counts) == 2 and all(float(c.split()[-1]) >= 2 for c in counts)

            await daemon.wait_for(both_probed_twice, timeout=10, what="two runs of each")
            text = await daemon.metrics()
            for name in ("outagewatch_probe_success", "outagewatch_probe_duration_seconds_bucket",
                         "outagewatch_probe_phase_duration_seconds",
                         "outagewatch_probe_last_run_timestamp_seconds",
                         "outagewatch_tls_cert_expiry_timestamp_seconds",
                         "outagewatch_build_info", "outagewatch_probe_threads_stuck"):
                assert metric_lines(text, name), name
            assert ('outagewatch_probe_success{platform="eu",target="imap",type="imap"} 1.0'
                    in text)
            assert 'phase="select"' in text
            assert 'le="1.0"' in text
            assert 'le="3.0"' in text
            assert "_created" not in text
            from tests.test_dashboard import used_names

            served = set()
            for line in text.splitlines():
                if line.startswith("# TYPE "):
                    name, kind = line.split()[2:4]
                    served.add(name)
                    served.update({"counter": [f"{name}_total"],
                                   "histogram": [f"{name}_bucket", f"{name}_sum",
                                                 f"{name}_count"]}.get(kind, []))
            assert set() == used_names() - served  # every panel and rule has its metric
            status, body = await daemon.get("/healthz")
            assert 200 == status
            assert '"ok"' in body
        finally:
            assert 0 == await daemon.stop()
        assert daemon.has_event("daemon_stopped")

    async def test_logs_are_json_and_never_show_secrets(self, tmp_path, smtpd, tls_files):
        """Off a terminal every line is JSON; a failing login logs the reason, not the
        password, at any log level."""
        port = free_port()
        config = tmp_path / "c.yaml"
        config.write_text(config_text(port, [
            (f"{{name: smtp, platform: eu, type: smtp, host: localhost, port: {smtpd.port},"
            f" username: probe, password: 'wrong-{SMTP_PASSWORD}', ca_file: '{tls_files['ca']}'}}"),
        ]))
        daemon = await DaemonProcess(config).start(port)
        try:
            await daemon.wait_for(lambda: daemon.has_event("probe_failed"), timeout=10,
                                  what="a failed probe")
        finally:
            await daemon.stop()
        events = daemon.events()
        assert all(e["event"] != "<not json>" for e in events), daemon.lines
        failed = next(e for e in events if e["event"] == "probe_failed")
        assert ("auth", "login", "smtp") == (failed["result"], failed["phase"], failed["target"])
        assert not any(SMTP_PASSWORD in line for line in daemon.lines)

    async def test_sighup_reload(self, tmp_path, http_server):
        """SIGHUP applies a good file (added target probed, removed target's series gone)
        and survives a bad one (logged, old config kept)."""
        port = free_port()
        url = f"http://127.0.0.1:{http_server.port}/"
        config = tmp_path / "c.yaml"
        state = tmp_path / "state.db"
        config.write_text(config_text(port, [
            f"{{name: old, platform: eu, type: http, url: '{url}'}}",
            f"{{name: stays, platform: eu, type: http, url: '{url}'}}",
        ], state=state))
        daemon = await DaemonProcess(config).start(port)
        try:
            await daemon.wait_for(
                lambda: _has(daemon, 'outagewatch_probes_total{platform="eu",result="ok",'
                                     'target="old",type="http"} 1.0'), timeout=10, what="old")
            config.write_text(config_text(port, [
                f"{{name: stays, platform: eu, type: http, url: '{url}'}}",
                f"{{name: new, platform: eu, type: http, url: '{url}'}}",
            ], state=state))
            daemon.signal(signal.SIGHUP)
            await daemon.wait_for(lambda: daemon.has_event("config_reloaded"), timeout=10,
                                  what="reload")
            await daemon.wait_for(
                lambda: _has(daemon, 'result="ok",target="new",type="http"} 2.0'), timeout=10,
                what="new target probed")
            text = await daemon.metrics()
            assert 'target="old"' not in text
            assert 'target="stays"' in text
            assert not daemon.has_event("config_needs_restart")

            config.write_text(config_text(port, [
                f"{{name: stays, platform: eu, type: http, url: '{url}'}}",
                f"{{name: new, platform: eu, type: http, url: '{url}'}}",
            ], state=state, extra="engine: {max_in_flight: 7}\n"))
            daemon.signal(signal.SIGHUP)
            await daemon.wait_for(lambda: daemon.has_event("config_needs_restart"), timeout=10,
                                  what="a change that needs a restart")
            (restart,) = [e for e in daemon.events() if e["event"] == "config_needs_restart"]
            assert "engine" == restart["section"]

            config.write_text("targets: [oops\n")
            daemon.signal(signal.SIGHUP)
            await daemon.wait_for(lambda: daemon.has_event("config_reload_failed"), timeout=10,
                                  what="failed reload")
            assert await daemon.ready()
            text = await daemon.metrics()
            assert 'outagewatch_config_reloads_total{result="failure"} 1.0' in text
            assert 'target="new"' in text
        finally:
            assert 0 == await daemon.stop()

    async def test_sigint_stops_cleanly(self, tmp_path, http_server):
        port = free_port()
        config = tmp_path / "c.yaml"
        config.write_text(config_text(port, [
            f"{{name: web, platform: eu, type: http, url: 'http://127.0.0.1:{http_server.port}/'}}",
        ]))
        daemon = await DaemonProcess(config).start(port)
        daemon.signal(signal.SIGINT)
        assert 0 == await daemon.process.wait()
        await daemon.stop()
        assert daemon.has_event("daemon_stopped")
        assert not any("Traceback" in line for line in daemon.lines)


async def _has(daemon: DaemonProcess, fragment: str) -> bool:
    return fragment in await daemon.metrics()


class TestSingleInstance:
    async def test_a_second_daemon_on_the_same_state_is_refused(self, tmp_path, http_server):
        """Two daemons on one state file would send every mail twice: the second exits 2
        with one line naming the file and the first one's pid, and the first runs on."""
        state = tmp_path / "state.db"
        url = f"http://127.0.0.1:{http_server.port}/"
        first_port, second_port = free_port(), free_port()
        first_config, second_config = tmp_path / "a.yaml", tmp_path / "b.yaml"
        first_config.write_text(config_text(first_port, [
            f"{{name: a, platform: eu, type: http, url: '{url}'}}"], state=state))
        second_config.write_text(config_text(second_port, [
            f"{{name: a, platform: eu, type: http, url: '{url}'}}"], state=state))
        first = await DaemonProcess(first_config).start(first_port)
        try:
            second = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "outagewatch", "run", "-c", str(second_config),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(second.communicate(), 15)
            assert await first.ready()
        finally:
            await first.stop()
        assert 2 == second.returncode
        assert [(f"outagewatch: state.path: {state} is in use by another outagewatch "
                f"(pid {first.process.pid}); one daemon per state file")] == \
            err.decode().splitlines()
        assert b"Traceback" not in out

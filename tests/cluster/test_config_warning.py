"""A cluster node logs the configuration's warnings at start, as one node does (issue 12)."""

from __future__ import annotations

from tests.helpers.daemon import DaemonProcess, free_port

from outagewatch.config import config_warnings, load_settings


async def test_a_node_logs_the_warnings_at_start(tmp_path, db):
    port = free_port()
    (tmp_path / "db-password").write_text(db.password + "\n")
    path = tmp_path / "node.yaml"
    path.write_text(
        f'server: {{listen: "127.0.0.1:{port}"}}\n'
        "platforms: {eu: {incident_recipients: [oncall@example.com]}}\n"
        "targets: [{name: web, platform: eu, type: http, url: 'http://127.0.0.1:9/'}]\n"
        f"state: {{url: 'postgresql://{db.server.user}@{db.server.host}:{db.server.port}/"
        f"{db.name}', password_file: '{tmp_path}/db-password'}}\n"
        "cluster: {node: solo, location: a}\n")
    daemon = await DaemonProcess(path).start(port)
    await daemon.stop()
    warnings = [e["warning"] for e in daemon.events() if e.get("event") == "config_warning"]
    assert config_warnings(load_settings(path)) == warnings
    assert 2 == len(warnings)  # no notify section; no info_recipients

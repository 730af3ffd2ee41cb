"""The shipped systemd unit passes systemd's own checker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parents[1] / "deploy" / "systemd" / "outagewatch.service"


def test_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("systemd-analyze is missing (Debian package systemd)")
        pytest.skip("systemd-analyze is not installed")
    binary = shutil.which("outagewatch") or str(Path(sys.executable).parent / "outagewatch")
    text = UNIT.read_text().replace("/usr/local/bin/outagewatch", binary)
    text = text.replace("/bin/kill", shutil.which("kill") or "/bin/kill")
    unit = tmp_path / "outagewatch.service"
    unit.write_text(text)
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "outagewatch.service" in line]
    assert (0, []) == (result.returncode, problems)
    assert "Type=notify" in text
    assert "WatchdogSec=" in text


PROMETHEUS = Path(__file__).parents[1] / "deploy" / "prometheus"


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("promtool is missing (Debian package prometheus)")
        pytest.skip("promtool is not installed")
    return promtool


def test_prometheus_rules_check_and_unit_tests():
    """promtool accepts the rules, and every alert fires (and stays quiet) as tested."""
    promtool = _promtool()
    check = subprocess.run([promtool, "check", "rules", "rules.yml"], cwd=PROMETHEUS,
                           capture_output=True, text=True)
    assert 0 == check.returncode, check.stdout + check.stderr
    tests = subprocess.run([promtool, "test", "rules", "rules.test.yml"], cwd=PROMETHEUS,
                           capture_output=True, text=True)
    assert 0 == tests.returncode, tests.stdout + tests.stderr
    assert "SUCCESS" in tests.stdout + tests.stderr


KUBERNETES = Path(__file__).parents[1] / "deploy" / "kubernetes"
CRDS = {"ServiceMonitor", "PrometheusRule"}


def _kustomize_build() -> list[dict]:
    import yaml

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("kubectl (with its built-in kustomize) is missing")
        pytest.skip("kubectl is not installed")
    built = subprocess.run([kubectl, "kustomize", str(KUBERNETES)], capture_output=True,
                           text=True, timeout=60)
    assert 0 == built.returncode, built.stderr
    assert "Warning" not in built.stderr, built.stderr
    return [d for d in yaml.safe_load_all(built.stdout) if d]


def test_kustomization_builds_and_validates(tmp_path):
    """kustomize builds the base, and every core object is valid against the Kubernetes
    schemas (strict: no unknown fields)."""
    import yaml
    from kubernetes_validate import validate
    from kubernetes_validate.utils import latest_version

    docs = _kustomize_build()
    kinds = sorted(d["kind"] for d in docs)
    assert ["ConfigMap", "Deployment", "Namespace", "PersistentVolumeClaim",
            "PrometheusRule", "Service", "ServiceMonitor"] == kinds
    version = latest_version()
    for doc in docs:
        if doc["kind"] not in CRDS:
            validate(doc, version, strict=True)
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    rules = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    assert rules == rule["spec"]  # one source of truth for the alerts
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert (1, "Recreate") == (deployment["spec"]["replicas"],
                               deployment["spec"]["strategy"]["type"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert "RuntimeDefault" == pod["securityContext"]["seccompProfile"]["type"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert ["ALL"] == container["securityContext"]["capabilities"]["drop"]
    assert {"requests", "limits"} <= set(container["resources"])
    assert ("/healthz", "/readyz") == (container["livenessProbe"]["httpGet"]["path"],
                                       container["readinessProbe"]["httpGet"]["path"])


def test_example_secret_validates():
    import yaml
    from kubernetes_validate import validate
    from kubernetes_validate.utils import latest_version

    secret = yaml.safe_load((KUBERNETES / "secret.example.yaml").read_text())
    validate(secret, latest_version(), strict=True)


def test_dockerfile_is_multistage_and_non_root():
    """No engine runs here to build it; check what the manifests rely on instead."""
    text = (Path(__file__).parents[1] / "Dockerfile").read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert 2 == len(stages)
    assert "USER 10001:10001" in text  # runAsUser in deployment.yaml
    assert 'ENTRYPOINT ["outagewatch"]' in text
    assert "/var/lib/outagewatch" in text

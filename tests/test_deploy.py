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


CLUSTER = KUBERNETES / "cluster"


def _kustomize_build(root: Path = KUBERNETES, *flags: str) -> list[dict]:
    """``kubectl kustomize`` of ``root``: its objects, every core one valid against the
    Kubernetes schemas (strict: no unknown fields), and the alerts those of rules.yml."""
    import yaml
    from kubernetes_validate import validate
    from kubernetes_validate.utils import latest_version

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("kubectl (with its built-in kustomize) is missing")
        pytest.skip("kubectl is not installed")
    built = subprocess.run([kubectl, "kustomize", *flags, str(root)], capture_output=True,
                           text=True, timeout=60)
    assert 0 == built.returncode, built.stderr
    assert "Warning" not in built.stderr, built.stderr
    docs = [d for d in yaml.safe_load_all(built.stdout) if d]
    version = latest_version()
    for doc in docs:
        if doc["kind"] not in CRDS:
            validate(doc, version, strict=True)
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    rules = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    assert rules == rule["spec"]  # one source of truth for the alerts
    return docs


def _assert_hardened(deployment: dict) -> None:
    """What every outagewatch pod keeps from the base: non-root, read-only, probes."""
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert "RuntimeDefault" == pod["securityContext"]["seccompProfile"]["type"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert ["ALL"] == container["securityContext"]["capabilities"]["drop"]
    assert {"requests", "limits"} <= set(container["resources"])
    assert ("/healthz", "/readyz") == (container["livenessProbe"]["httpGet"]["path"],
                                       container["readinessProbe"]["httpGet"]["path"])


def test_kustomization_builds_and_validates(tmp_path):
    """kustomize builds the base, and every core object is valid against the Kubernetes
    schemas (strict: no unknown fields)."""
    docs = _kustomize_build()
    kinds = sorted(d["kind"] for d in docs)
    assert ["ConfigMap", "Deployment", "Namespace", "PersistentVolumeClaim",
            "PrometheusRule", "Service", "ServiceMonitor"] == kinds
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert (1, "Recreate") == (deployment["spec"]["replicas"],
                               deployment["spec"]["strategy"]["type"])
    _assert_hardened(deployment)


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_cluster_overlay_builds_and_validates():
    """The cluster overlay (one node per location, state in PostgreSQL) builds from the
    base's manifests and validates like the base: three Deployments, each its own location
    and zone, a disruption budget over all of them, and no volume claim."""
    # kustomize refuses an overlay inside its base's directory ("cycle detected"), so the
    # overlay lists the base's files, which needs the load restrictor off
    docs = _kustomize_build(CLUSTER, "--load-restrictor=LoadRestrictionsNone")
    kinds = sorted(d["kind"] for d in docs)
    assert ["ConfigMap", "Deployment", "Deployment", "Deployment", "Namespace",
            "PodDisruptionBudget", "PrometheusRule", "Service", "ServiceMonitor"] == kinds
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    locations = []
    for deployment in deployments:
        _assert_hardened(deployment)
        spec = deployment["spec"]
        pod = spec["template"]["spec"]
        env = _env(pod["containers"][0])
        location = env["OUTAGEWATCH_CLUSTER__LOCATION"]["value"]
        locations.append(location)
        # a stable node name per location, and the pod's address for forwarded changes
        assert f"outagewatch-{location}" == env["OUTAGEWATCH_CLUSTER__NODE"]["value"]
        assert "$(POD_IP):9817" == env["OUTAGEWATCH_CLUSTER__ADVERTISE"]["value"]
        assert "/run/secrets/outagewatch" == env["CREDENTIALS_DIRECTORY"]["value"]
        # a location's seat is unique: the old pod goes before the new one starts
        assert (1, "RollingUpdate", 0) == (spec["replicas"], spec["strategy"]["type"],
                                           spec["strategy"]["rollingUpdate"]["maxSurge"])
        assert "persistentVolumeClaim" not in str(pod["volumes"])
        assert "/var/lib/outagewatch" not in str(pod["containers"][0]["volumeMounts"])
        terms = pod["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert [{"key": "topology.kubernetes.io/zone", "operator": "In",
                 "values": [location]}] == terms[0]["matchExpressions"]
        assert location == spec["selector"]["matchLabels"]["outagewatch/location"]
    assert sorted(locations) == sorted(set(locations)) == ["ams", "fra", "nyc"]
    pdb = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    assert 2 == pdb["spec"]["minAvailable"]
    assert {"app.kubernetes.io/name": "outagewatch"} == pdb["spec"]["selector"]["matchLabels"]
    config = next(d for d in docs if d["kind"] == "ConfigMap")  # the cluster's config.yaml
    assert "cluster:" in config["data"]["outagewatch.yaml"]
    for deployment in deployments:
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert config["metadata"]["name"] == volumes["config"]["configMap"]["name"]


def test_cluster_config_loads(tmp_path, monkeypatch):
    """The overlay's configuration is valid for each node, and lists the locations its
    Deployments run in."""
    import yaml

    from outagewatch.config import load_settings

    secrets = yaml.safe_load((CLUSTER / "secret.example.yaml").read_text())["stringData"]
    for name, value in secrets.items():
        (tmp_path / name).write_text(value)
    text = (CLUSTER / "config.yaml").read_text()
    ca = "/run/secrets/outagewatch/db-ca.crt"
    assert ca in text
    config = tmp_path / "outagewatch.yaml"
    config.write_text(text.replace(ca, str(tmp_path / "db-ca.crt")))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("OUTAGEWATCH_CLUSTER__NODE", "outagewatch-ams")
    monkeypatch.setenv("OUTAGEWATCH_CLUSTER__LOCATION", "ams")
    settings = load_settings(config)
    assert settings.cluster is not None
    assert ("outagewatch-ams", "ams", ["fra", "ams", "nyc"], 2, 15.0) == (
        settings.cluster.node, settings.cluster.location, settings.cluster.locations,
        settings.cluster.quorum, settings.cluster.lease.total_seconds())
    assert ("verify-full", secrets["db-password"]) == (settings.state.sslmode,
                                                       settings.state.secret())


@pytest.mark.parametrize("path", [KUBERNETES / "secret.example.yaml",
                                  CLUSTER / "secret.example.yaml"],
                         ids=["base", "cluster"])
def test_example_secret_validates(path):
    import yaml
    from kubernetes_validate import validate
    from kubernetes_validate.utils import latest_version

    secret = yaml.safe_load(path.read_text())
    validate(secret, latest_version(), strict=True)


def test_dockerfile_is_multistage_and_non_root():
    """No engine runs here to build it; check what the manifests rely on instead."""
    text = (Path(__file__).parents[1] / "Dockerfile").read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert 2 == len(stages)
    assert "USER 10001:10001" in text  # runAsUser in deployment.yaml
    assert 'ENTRYPOINT ["outagewatch"]' in text
    assert "/var/lib/outagewatch" in text

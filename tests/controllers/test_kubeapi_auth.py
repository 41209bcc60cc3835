"""The operator's direct API calls carry the pod's service-account token (they went anonymous before)."""

from __future__ import annotations

from pathlib import Path

from kubernetes.client import Configuration
from kubernetes.config.incluster_config import InClusterConfigLoader

from vmshift.controllers.kubeapi import bearer_header


def _in_cluster(tmp_path: Path, token: str) -> Configuration:
    (tmp_path / "token").write_text(token)
    (tmp_path / "ca.crt").write_text("not read by this test\n")
    config = Configuration()
    InClusterConfigLoader(str(tmp_path / "token"), str(tmp_path / "ca.crt"),
                          environ={"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"},
                          ).load_and_set(config)
    return config


def test_in_cluster_credentials_become_a_bearer_header(tmp_path: Path) -> None:
    config = _in_cluster(tmp_path, "sa-token-1")
    assert config.host == "https://10.0.0.1:443"
    assert bearer_header(config) == "bearer sa-token-1"


def test_a_kubeconfig_token_in_the_older_key_is_used_too() -> None:
    config = Configuration()
    config.api_key["authorization"] = "Bearer from-kubeconfig"
    assert bearer_header(config) == "Bearer from-kubeconfig"


def test_client_certificates_send_no_header() -> None:
    assert bearer_header(Configuration()) is None

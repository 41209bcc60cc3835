"""Token Secrets: made once with a random token, read after, never overwritten; the race of two starts."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from vmshift.controllers.tokens import TokenSecretError, ensure_token_secret, operator_namespace


class Secret:
    def __init__(self, data: dict[str, str]) -> None:
        self.data = data


class FakeCore:
    """The two CoreV1Api calls ensure_token_secret makes, over a dict; ``rival`` creates first on create."""

    def __init__(self, rival: str | None = None) -> None:
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.rival = rival

    def read_namespaced_secret(self, name: str, namespace: str) -> Secret:
        if (namespace, name) not in self.secrets:
            raise ApiException(status=404, reason="Not Found")
        return Secret(self.secrets[namespace, name])

    def create_namespaced_secret(self, namespace: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        if self.rival is not None:
            self.secrets[namespace, name] = {"token": base64.b64encode(self.rival.encode()).decode()}
        if (namespace, name) in self.secrets:
            raise ApiException(status=409, reason="AlreadyExists")
        self.secrets[namespace, name] = body["data"]


def test_a_missing_secret_is_made_once_and_read_after() -> None:
    core = FakeCore()
    token, created = ensure_token_secret(core, "ns", "t", generate=lambda: "first")
    assert (token, created) == ("first", True)
    assert ensure_token_secret(core, "ns", "t", generate=lambda: "second") == ("first", False)


def test_the_loser_of_a_create_race_takes_the_winners_token() -> None:
    core = FakeCore(rival="winner")
    assert ensure_token_secret(core, "ns", "t", generate=lambda: "loser") == ("winner", False)


def test_a_secret_without_the_token_key_is_named_and_left_alone() -> None:
    core = FakeCore()
    core.secrets["ns", "t"] = {"password": base64.b64encode(b"x").decode()}
    with pytest.raises(TokenSecretError, match="Secret ns/t exists but has no non-empty key 'token'"):
        ensure_token_secret(core, "ns", "t")
    assert "token" not in core.secrets["ns", "t"]


def test_the_namespace_comes_from_the_environment_then_the_service_account(tmp_path: Path) -> None:
    sa_file = tmp_path / "namespace"
    assert operator_namespace({"VMSHIFT_NAMESPACE": "from-env"}, sa_file) == "from-env"
    sa_file.write_text("from-pod\n")
    assert operator_namespace({}, sa_file) == "from-pod"
    assert operator_namespace({}, tmp_path / "absent") == "vmshift-system"

"""Bearer tokens that nobody types and nobody commits: made once, kept in Secrets of the operator's namespace.

At its first start the operator creates each named Secret (key ``token``, a random URL-safe string)
when it is missing and reads it when it is there; the agents mount the agent token's Secret, and
Alertmanager's configuration reads the webhook token's. A Secret that exists without a usable
``token`` key is never overwritten (a person made it): the start fails with a message naming it.
Blocking calls with the official client, made once at start-up before Kopf runs; no decisions.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from vmshift.api.labels import MANAGED_BY, MANAGED_BY_LABEL, PART_OF, PART_OF_LABEL

TOKEN_KEY = "token"
#: Where the install puts the operator; the namespace of last resort outside a pod.
DEFAULT_NAMESPACE = "vmshift-system"
#: The namespace a pod runs in, as Kubernetes mounts it with the service account's credentials.
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
LABELS = {PART_OF_LABEL: PART_OF, MANAGED_BY_LABEL: MANAGED_BY}


class TokenSecretError(Exception):
    """A token Secret cannot be used or made; the message names it and says what to do."""


def operator_namespace(env: Mapping[str, str] | None = None, sa_file: Path = SERVICE_ACCOUNT_NAMESPACE) -> str:
    """The operator's own namespace, where its token Secrets live (and the only one it reads Secrets
    in): ``VMSHIFT_NAMESPACE`` (``--namespace``), else the pod's service account's, else vmshift-system."""
    env = os.environ if env is None else env
    namespace = (env.get("VMSHIFT_NAMESPACE") or "").strip()
    if not namespace and sa_file.exists():
        namespace = sa_file.read_text().strip()
    return namespace or DEFAULT_NAMESPACE


def new_token() -> str:
    return secrets.token_urlsafe(32)


def _decode(secret: Any, namespace: str, name: str) -> str:
    data = secret.data or {}
    token = base64.b64decode(data.get(TOKEN_KEY) or "").decode(errors="replace").strip()
    if not token:
        raise TokenSecretError(f"Secret {namespace}/{name} exists but has no non-empty key {TOKEN_KEY!r}: put the "
                               f"token there, or delete the Secret and the operator makes a new one at its next start")
    return token


def ensure_token_secret(core: Any, namespace: str, name: str, *, annotations: Mapping[str, str] | None = None,
                        generate: Callable[[], str] = new_token) -> tuple[str, bool]:
    """The token in Secret ``namespace/name``, made with a fresh random token (and ``annotations``)
    when the Secret is missing.

    ``core`` is a ``kubernetes.client.CoreV1Api``. Returns ``(token, created)``. Two operators that
    start at once both end with the same token: the loser of the create reads the winner's Secret.
    """
    try:
        return _decode(core.read_namespaced_secret(name, namespace), namespace, name), False
    except ApiException as exc:
        if exc.status != 404:
            raise TokenSecretError(f"cannot read Secret {namespace}/{name}: {exc.status} {exc.reason}") from None
    except HTTPError as exc:
        raise TokenSecretError(f"cannot reach the API server to read Secret {namespace}/{name}: {exc}") from None
    token = generate()
    body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(LABELS),
                         "annotations": dict(annotations or {})},
            "data": {TOKEN_KEY: base64.b64encode(token.encode()).decode()}}
    try:
        core.create_namespaced_secret(namespace, body)
    except ApiException as exc:
        if exc.status == 409:
            return _decode(core.read_namespaced_secret(name, namespace), namespace, name), False
        raise TokenSecretError(f"cannot create Secret {namespace}/{name}: {exc.status} {exc.reason} (the operator "
                               f"needs `create` on secrets in {namespace})") from None
    return token, True

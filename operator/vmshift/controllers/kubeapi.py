"""The operator's few direct calls to the Kubernetes API, made async by running the official client in threads.

Talks to the API server only; holds no state but the client. Kopf does the watching; this module
patches status subresources, creates and deletes objects the operator owns, and reads Secrets.
Every call counts itself in the ``vmshift_api_requests_total`` metric so idle traffic is visible.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from vmshift import metrics

GROUP = "vmshift.io"
VERSION = "v1alpha1"

_clients: dict[str, Any] = {}


def configure() -> None:
    """Load credentials once: in-cluster when there, else KUBECONFIG or ~/.kube/config."""
    if _clients:
        return
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    api = kubernetes.client.ApiClient()
    # Several daemons patch at once; the default pool of 4 connections would serialize them.
    api.rest_client.pool_manager.connection_pool_kw["maxsize"] = 32
    _clients["custom"] = kubernetes.client.CustomObjectsApi(api)
    _clients["core"] = kubernetes.client.CoreV1Api(api)


def _custom() -> Any:
    configure()
    return _clients["custom"]


def _core() -> Any:
    configure()
    return _clients["core"]


async def _call(verb: str, resource: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    metrics.API_REQUESTS.labels(verb=verb, resource=resource).inc()
    return await asyncio.to_thread(fn, *args, **kwargs)


async def patch_status(plural: str, namespace: str | None, name: str, status: dict[str, Any]) -> None:
    """Merge-patch ``status`` of one of our objects; a vanished object is not an error."""
    body = {"status": status}
    try:
        if namespace:
            await _call("patch", plural, _custom().patch_namespaced_custom_object_status,
                        GROUP, VERSION, namespace, plural, name, body)
        else:
            await _call("patch", plural, _custom().patch_cluster_custom_object_status,
                        GROUP, VERSION, plural, name, body)
    except ApiException as exc:
        if exc.status != 404:
            raise


async def create(plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """Create a namespaced object; None when one of that name exists already."""
    try:
        result: dict[str, Any] = await _call("create", plural, _custom().create_namespaced_custom_object,
                                             GROUP, VERSION, namespace, plural, body)
        return result
    except ApiException as exc:
        if exc.status == 409:
            return None
        raise


async def delete(plural: str, namespace: str, name: str) -> None:
    try:
        await _call("delete", plural, _custom().delete_namespaced_custom_object,
                    GROUP, VERSION, namespace, plural, name)
    except ApiException as exc:
        if exc.status != 404:
            raise


async def get(plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
    try:
        if namespace:
            result: dict[str, Any] = await _call("get", plural, _custom().get_namespaced_custom_object,
                                                 GROUP, VERSION, namespace, plural, name)
        else:
            result = await _call("get", plural, _custom().get_cluster_custom_object, GROUP, VERSION, plural, name)
        return result
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


async def read_secret_key(namespace: str, name: str, key: str) -> str | None:
    """One key of a Secret, decoded; None when the Secret or the key is missing."""
    try:
        secret = await _call("get", "secrets", _core().read_namespaced_secret, name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    data = secret.data or {}
    if key not in data:
        return None
    return base64.b64decode(data[key]).decode().strip()


async def read_configmap_key(namespace: str, name: str, key: str) -> str | bytes | None:
    """One key of a ConfigMap (text from data, bytes from binaryData); None when missing."""
    try:
        cm = await _call("get", "configmaps", _core().read_namespaced_config_map, name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    if cm.data and key in cm.data:
        return str(cm.data[key])
    if cm.binary_data and key in cm.binary_data:
        return base64.b64decode(cm.binary_data[key])
    return None


async def patch(plural: str, namespace: str | None, name: str, body: dict[str, Any]) -> None:
    """Merge-patch one of our objects outside its status (e.g. a Host annotation the operator
    consumes); a vanished object is not an error."""
    try:
        if namespace:
            await _call("patch", plural, _custom().patch_namespaced_custom_object,
                        GROUP, VERSION, namespace, plural, name, body)
        else:
            await _call("patch", plural, _custom().patch_cluster_custom_object, GROUP, VERSION, plural, name, body)
    except ApiException as exc:
        if exc.status != 404:
            raise


# --- for the informers: blocking calls, made from their own threads ---------------------------------


def list_page(plural: str, *, limit: int, token: str | None) -> dict[str, Any]:
    """One page of every object of a kind, across namespaces (blocking)."""
    metrics.API_REQUESTS.labels(verb="list", resource=plural).inc()
    kwargs: dict[str, Any] = {"limit": limit, "_request_timeout": 60}
    if token:
        kwargs["_continue"] = token
    page: dict[str, Any] = _custom().list_cluster_custom_object(GROUP, VERSION, plural, **kwargs)
    return page


def watch_stream(plural: str, resource_version: str, timeout_seconds: int) -> Any:
    """An open watch of a kind from ``resource_version``, as the raw streaming response (blocking)."""
    metrics.API_REQUESTS.labels(verb="watch", resource=plural).inc()
    return _custom().list_cluster_custom_object(
        GROUP, VERSION, plural, watch=True, resource_version=resource_version, allow_watch_bookmarks=True,
        timeout_seconds=timeout_seconds, _preload_content=False, _request_timeout=(10, timeout_seconds + 30))

"""The operator's few direct calls to the Kubernetes API.

Talks to the API server only; holds no state but the clients. Kopf runs the handlers; the informers
(``informer``) list and watch with the official client from their own threads; every other call is
made here, on the event loop, with aiohttp and the credentials the official client loaded (in-cluster
service account or KUBECONFIG). The official client in threads cost more CPU per request than the
work it carried (its validation wrappers, a thread hop each), which 10,000 VMs made visible.
Errors are raised as the official client's ``ApiException`` (status, reason, body), so callers
handle one kind. Every call counts itself in ``vmshift_api_requests_total``. A call that meets an
API server restarting or overloaded (connection refused or reset, 429, 500, 502, 503, 504) is
tried again with backoff for up to ``RETRY_SECONDS`` before it raises: otherwise one restart of the
API server fails the daemon that made the call, and Kopf restarts a failed daemon only after 60 s.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import ssl
import time
from typing import Any

import aiohttp
import kubernetes
import orjson
from kubernetes.client.exceptions import ApiException

from vmshift import __version__, metrics
from vmshift.api.common import GROUP, VERSION
from vmshift.api.statuspatch import StatusPatchError, status_patch

MERGE_PATCH = "application/merge-patch+json"

_clients: dict[str, Any] = {}
log = logging.getLogger("vmshift.kubeapi")

#: How long a call keeps trying through an API server restart or overload before it raises.
RETRY_SECONDS = 30.0
#: Core kinds (cluster-scoped) the informers also cache: namespaces, for their labels
#: (MigrationPolicy's namespaceSelector).
CLUSTER_CORE = frozenset({"namespaces"})

#: Who the API server sees calling: its audit log's userAgent, and (the part before the slash) the
#: manager of every field the operator writes in ``metadata.managedFields``, as virt-controller is
#: KubeVirt's. Without it the API server names the HTTP library ("Python", "OpenAPI-Generator").
USER_AGENT = f"vmshift-operator/{__version__}"

#: The longest one call may take.
_TIMEOUT = aiohttp.ClientTimeout(total=60)
#: Statuses that say "not now" rather than "no".
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})


def configure() -> None:
    """Load credentials once: in-cluster when there, else KUBECONFIG or ~/.kube/config."""
    if _clients:
        return
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    api = kubernetes.client.ApiClient()
    api.user_agent = USER_AGENT
    _clients["config"] = api.configuration
    _clients["api"] = api
    _clients["custom"] = kubernetes.client.CustomObjectsApi(api)


def _custom() -> Any:
    configure()
    return _clients["custom"]


def _session() -> aiohttp.ClientSession:
    """One connection pool per event loop, built from the loaded credentials."""
    configure()
    session: aiohttp.ClientSession | None = _clients.get("session")
    if session is None or session.closed:
        config = _clients["config"]
        context = ssl.create_default_context(cafile=config.ssl_ca_cert)
        if not config.verify_ssl:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        if config.cert_file:
            context.load_cert_chain(config.cert_file, config.key_file)
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, limit=32),
                                        headers={"User-Agent": USER_AGENT})
        _clients["session"] = session
    return session


async def close() -> None:
    session = _clients.pop("session", None)
    if session is not None:
        await session.close()


def _path(plural: str, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
    core = plural in ("secrets", "configmaps", "events")
    base = "/api/v1" if core else f"/apis/{GROUP}/{VERSION}"
    path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    return path + (f"/{name}" if name else "") + (f"/{subresource}" if subresource else "")


def bearer_header(config: Any) -> str | None:
    """The Authorization header of the loaded credentials, when they are a token (service account or kubeconfig).

    The official client keeps the token under ``BearerToken`` (older versions: ``authorization``);
    reading it runs the in-cluster loader's hook, which rereads a rotated service-account token.
    """
    header: str | None = config.get_api_key_with_prefix("BearerToken", alias="authorization")
    return header


async def _request(verb: str, plural: str, path: str, body: Any = None,
                   content_type: str = "application/json") -> dict[str, Any]:
    """One call, tried again through transient trouble for up to RETRY_SECONDS (every verb here is
    safe to repeat: patches are merges, a repeated create answers 409 and a repeated delete 404)."""
    deadline = time.monotonic() + RETRY_SECONDS
    delay = 0.1
    while True:
        try:
            return await _request_once(verb, plural, path, body, content_type)
        except (aiohttp.ClientConnectionError, ApiException) as exc:
            transient = not isinstance(exc, ApiException) or exc.status in TRANSIENT_STATUSES
            if not transient or time.monotonic() + delay > deadline:
                raise
            log.warning("%s %s: %s; trying again in %.1f s", verb, path, _describe(exc), delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


def _describe(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        return f"the API server answered {exc.status} {exc.reason}"
    return f"the API server cannot be reached ({exc})"


async def _request_once(verb: str, plural: str, path: str, body: Any, content_type: str) -> dict[str, Any]:
    metrics.API_REQUESTS.labels(verb=verb, resource=plural).inc()
    session = _session()
    config = _clients["config"]
    headers = {"Accept": "application/json"}
    token = bearer_header(config)
    if token:
        headers["Authorization"] = token
    data = None
    if body is not None:
        headers["Content-Type"] = content_type
        data = orjson.dumps(body)
    method = {"get": "GET", "create": "POST", "delete": "DELETE", "patch": "PATCH"}[verb]
    async with session.request(method, config.host + path, data=data, headers=headers,
                               timeout=_TIMEOUT) as response:
        raw = await response.read()
        if response.status >= 400:
            exc = ApiException(status=response.status, reason=response.reason)
            exc.body = raw.decode(errors="replace")
            raise exc
        result: dict[str, Any] = orjson.loads(raw) if raw else {}
        return result


#: Set (to anything but "" or "0") in tests and CI: a status patch its model refuses raises instead of
#: being logged and sent as it is (where the API server would prune what its schema does not know).
STRICT_STATUS_ENV = "VMSHIFT_STRICT_STATUS"


def checked_status(plural: str, status: dict[str, Any]) -> dict[str, Any]:
    """``status`` through its kind's status model (see ``api.statuspatch``)."""
    try:
        return status_patch(plural, status)
    except StatusPatchError as exc:
        if os.environ.get(STRICT_STATUS_ENV, "") not in ("", "0"):
            raise
        metrics.RECONCILE_ERRORS.labels(kind=f"status/{plural}").inc()
        log.error("status patch of %s outside its model (a bug; sent as it is): %s", plural, exc)
        return status


async def patch_status(plural: str, namespace: str | None, name: str,
                       status: dict[str, Any]) -> dict[str, Any] | None:
    """Merge-patch ``status`` of one of our objects, checked by its status model: the object as
    written, or None when it has vanished (not an error)."""
    body = {"status": checked_status(plural, status)}
    try:
        return await _request("patch", plural, _path(plural, namespace, name, "status"), body, MERGE_PATCH)
    except ApiException as exc:
        if exc.status != 404:
            raise
        return None


async def patch(plural: str, namespace: str | None, name: str, body: dict[str, Any]) -> None:
    """Merge-patch one of our objects outside its status (e.g. a Host annotation the operator
    consumes); a vanished object is not an error."""
    try:
        await _request("patch", plural, _path(plural, namespace, name), body, MERGE_PATCH)
    except ApiException as exc:
        if exc.status != 404:
            raise


async def create(plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """Create a namespaced object; None when one of that name exists already."""
    try:
        return await _request("create", plural, _path(plural, namespace), body)
    except ApiException as exc:
        if exc.status == 409:
            return None
        raise


async def delete(plural: str, namespace: str, name: str, *, resource_version: str | None = None) -> bool:
    """Delete an object (gone already counts as deleted). With ``resource_version``, only if it is still
    at that version: False when it changed meanwhile (409), so a decision taken on what was seen
    never lands on something else."""
    options = None if resource_version is None else {
        "apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"resourceVersion": resource_version}}
    try:
        await _request("delete", plural, _path(plural, namespace, name), options)
    except ApiException as exc:
        if exc.status == 409 and resource_version is not None:
            return False
        if exc.status != 404:
            raise
    return True


async def get(plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
    try:
        return await _request("get", plural, _path(plural, namespace, name))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


async def read_secret(namespace: str, name: str, key: str) -> tuple[str | None, dict[str, str]]:
    """One key of a Secret, decoded (None when the Secret or the key is missing), and the Secret's annotations."""
    secret = await get("secrets", namespace, name) or {}
    annotations = dict((secret.get("metadata") or {}).get("annotations") or {})
    data = secret.get("data") or {}
    if key not in data:
        return None, annotations
    return base64.b64decode(data[key]).decode().strip(), annotations


async def read_configmap_key(namespace: str, name: str, key: str) -> str | bytes | None:
    """One key of a ConfigMap (text from data, bytes from binaryData); None when missing."""
    cm = await get("configmaps", namespace, name) or {}
    if key in (cm.get("data") or {}):
        return str(cm["data"][key])
    if key in (cm.get("binaryData") or {}):
        return base64.b64decode(cm["binaryData"][key])
    return None


# --- for the informers: blocking calls, made from their own threads ---------------------------------


def _core_get(plural: str, query: list[tuple[str, Any]], timeout: Any) -> Any:
    """GET /api/v1/<plural> (a cluster-scoped core kind) with the official client's credentials, as
    the raw response (blocking; a non-2xx answer raises ApiException). Not through ``CoreV1Api``:
    importing that module costs about 0.6 s of CPU, which on the event loop at start-up held every
    handler back and was the longest step of the loop (py-spy, restart)."""
    configure()
    api = _clients["api"]
    request = api.param_serialize(method="GET", resource_path=f"/api/v1/{plural}", query_params=query,
                                  header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
    return api._call_with_legacy_options(request, {}, async_req=False, preload_content=False,
                                         request_timeout=timeout, return_http_data_only=True)


def list_page(plural: str, *, limit: int, token: str | None) -> dict[str, Any]:
    """One page of every object of a kind, across namespaces (blocking)."""
    metrics.API_REQUESTS.labels(verb="list", resource=plural).inc()
    kwargs: dict[str, Any] = {"limit": limit, "_request_timeout": 60}
    if token:
        kwargs["_continue"] = token
    if plural in CLUSTER_CORE:
        query = [("limit", limit), *([("continue", token)] if token else [])]
        core_page: dict[str, Any] = orjson.loads(_core_get(plural, query, 60).data)
        return core_page
    # The raw body, parsed by orjson: the official client's own parsing (stdlib json, then a walk of
    # the result) cost several times as much for a page of 500 VMs.
    raw = _custom().list_cluster_custom_object(GROUP, VERSION, plural, _preload_content=False, **kwargs)
    page: dict[str, Any] = orjson.loads(raw.data)
    return page


def watch_stream(plural: str, resource_version: str, timeout_seconds: int) -> Any:
    """An open watch of a kind from ``resource_version``, as the raw streaming response (blocking)."""
    metrics.API_REQUESTS.labels(verb="watch", resource=plural).inc()
    if plural in CLUSTER_CORE:
        return _core_get(plural, [("allowWatchBookmarks", True), ("resourceVersion", resource_version),
                                  ("timeoutSeconds", timeout_seconds), ("watch", True)],
                         (10, timeout_seconds + 30))
    return _custom().list_cluster_custom_object(
        GROUP, VERSION, plural, watch=True, resource_version=resource_version, allow_watch_bookmarks=True,
        timeout_seconds=timeout_seconds, _preload_content=False, _request_timeout=(10, timeout_seconds + 30))

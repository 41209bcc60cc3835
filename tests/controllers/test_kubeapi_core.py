"""The namespaces informer's list and watch, made without ``CoreV1Api`` (its import held the event
loop ~0.6 s at start-up), answer what ``CoreV1Api.list_namespace`` answers, on a real API server."""

from __future__ import annotations

import json
from collections.abc import Iterator

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from tests.kube import Kube
from vmshift.controllers import kubeapi
from vmshift.controllers.informer import lines


@pytest.fixture
def configured(kube: Kube, monkeypatch: pytest.MonkeyPatch) -> Iterator[Kube]:
    # The client reads KUBECONFIG when it is imported: point its default at this cluster instead.
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kube.kubeconfig))
    saved = dict(kubeapi._clients)
    kubeapi._clients.clear()
    try:
        yield kube
    finally:
        kubeapi._clients.clear()
        kubeapi._clients.update(saved)


def test_namespace_pages_equal_the_official_clients(configured: Kube) -> None:
    for name in ("core-a", "core-b", "core-c"):
        configured.kubectl("create", "namespace", name, check=False)
    kubeapi.configure()
    official = kubernetes.client.CoreV1Api(kubeapi._clients["api"])
    names: list[str] = []
    token: str | None = None
    while True:
        page = kubeapi.list_page("namespaces", limit=2, token=token)
        names += [item["metadata"]["name"] for item in page["items"]]
        token = page["metadata"].get("continue") or None
        if not token:
            break
    assert names == [n.metadata.name for n in official.list_namespace().items]
    assert {"core-a", "core-b", "core-c", "default"} <= set(names)
    assert page["kind"] == "NamespaceList" and page["metadata"]["resourceVersion"]


def test_a_namespace_watch_streams_the_changes_after_its_version(configured: Kube) -> None:
    version = kubeapi.list_page("namespaces", limit=500, token=None)["metadata"]["resourceVersion"]
    configured.kubectl("create", "namespace", "core-watched")
    response = kubeapi.watch_stream("namespaces", version, 5)
    try:
        events = [json.loads(line) for line in lines(response.stream(65536, decode_content=True))]
    finally:
        response.release_conn()
    assert any(e["type"] == "ADDED" and e["object"]["metadata"]["name"] == "core-watched" for e in events)


def test_a_refused_core_request_raises_the_clients_api_exception(configured: Kube) -> None:
    with pytest.raises(ApiException) as refused:
        kubeapi._core_get("nosuchthings", [("limit", 1)], 10)
    assert refused.value.status == 404

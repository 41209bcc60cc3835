"""A drain withdraws a queued migration only as it saw it: never one admitted since (real API server)."""

from __future__ import annotations

import asyncio
import json
import uuid

import kubernetes
import pytest

from tests.kube import Kube
from vmshift.controllers import kubeapi

pytestmark = pytest.mark.e2e


def test_a_delete_with_the_version_seen_spares_an_object_changed_since(kube: Kube,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    kube.apply_crds()
    ns = f"w-{uuid.uuid4().hex[:6]}"
    kube.kubectl("create", "namespace", ns)
    kube.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "vmshift.io/v1alpha1", "kind": "VirtualMachineMigration",
        "metadata": {"name": "queued", "namespace": ns}, "spec": {"vmName": "vm-1"}}))
    seen = kube.get_json("vsmig", "queued", "-n", ns)["metadata"]["resourceVersion"]
    api = kubernetes.config.new_client_from_config(config_file=str(kube.kubeconfig))
    monkeypatch.setattr(kubeapi, "_clients", {"config": api.configuration,
                                              "custom": kubernetes.client.CustomObjectsApi(api)})

    async def scenario() -> tuple[bool, bool]:
        try:
            # the migration controller admits it after the drain looked: its status moves on
            await kubeapi.patch_status("virtualmachinemigrations", ns, "queued", {"phase": "Validating"})
            stale = await kubeapi.delete("virtualmachinemigrations", ns, "queued", resource_version=seen)
            current = kube.get_json("vsmig", "queued", "-n", ns)["metadata"]["resourceVersion"]
            fresh = await kubeapi.delete("virtualmachinemigrations", ns, "queued", resource_version=current)
            return stale, fresh
        finally:
            await kubeapi.close()

    stale, fresh = asyncio.run(scenario())
    assert stale is False, "a withdrawal decided on the queued version deleted the admitted migration"
    assert fresh is True
    assert kube.kubectl("get", "vsmig", "queued", "-n", ns, check=False).returncode != 0

"""The plugin's calls to the Kubernetes API, with the official client and the user's kubeconfig.

Talks to the API server only. Honours what kubectl plugins honour: ``--kubeconfig`` (else
``$KUBECONFIG``, else ``~/.kube/config``), ``--context``, and ``-n`` (else the context's namespace,
else ``default``). Blocking calls: the plugin is a short-lived command. Errors become
:class:`ApiServerError` with a sentence naming the object and what the API server said.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from vmshift.api.common import GROUP, VERSION

#: kind -> (plural, namespaced)
KINDS: dict[str, tuple[str, bool]] = {
    "Host": ("hosts", False),
    "VirtualMachine": ("virtualmachines", True),
    "VirtualMachineMigration": ("virtualmachinemigrations", True),
    "VirtualMachineImport": ("virtualmachineimports", True),
    "MigrationPolicy": ("migrationpolicies", False),
    "RemediationPolicy": ("remediationpolicies", False),
}


class ApiServerError(RuntimeError):
    """A call the API server refused or could not answer, as a sentence for a person."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _explain(exc: ApiException, what: str) -> ApiServerError:
    detail = exc.reason or ""
    try:
        body = json.loads(exc.body or "{}")
        detail = body.get("message") or detail
    except (TypeError, ValueError):
        pass
    if exc.status == 403:
        return ApiServerError(f"not allowed to {what}: {detail}", exc.status)
    return ApiServerError(f"cannot {what}: the API server answered {exc.status}: {detail}", exc.status)


@dataclass
class Cluster:
    """One cluster as the user's kubeconfig names it."""

    api: kubernetes.client.ApiClient
    namespace: str

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None,
                namespace: str | None = None) -> Cluster:
        try:
            api = kubernetes.config.new_client_from_config(config_file=kubeconfig, context=context)
            contexts, active = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
        except (kubernetes.config.ConfigException, OSError) as exc:
            where = kubeconfig or "$KUBECONFIG or ~/.kube/config"
            raise ApiServerError(f"cannot load the kubeconfig ({where}): {exc}") from None
        chosen = next((c for c in contexts if c.get("name") == context), active) if context else active
        default_ns = ((chosen or {}).get("context") or {}).get("namespace") or "default"
        return cls(api=api, namespace=namespace or default_ns)

    @property
    def _custom(self) -> Any:
        return kubernetes.client.CustomObjectsApi(self.api)

    @property
    def _core(self) -> Any:
        return kubernetes.client.CoreV1Api(self.api)

    def _call(self, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, _request_timeout=30, **kwargs)
        except ApiException as exc:
            raise _explain(exc, what) from None
        except kubernetes.client.exceptions.OpenApiException as exc:
            raise ApiServerError(f"cannot {what}: {exc}") from None
        except OSError as exc:  # urllib3 wraps refusals in its own errors, subclasses of OSError
            raise ApiServerError(f"cannot {what}: the API server cannot be reached ({exc})") from None
        except Exception as exc:  # urllib3.exceptions.MaxRetryError and kin are not OSError everywhere
            if type(exc).__module__.startswith("urllib3"):
                raise ApiServerError(f"cannot {what}: the API server cannot be reached ({exc})") from None
            raise

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """One object, or None when there is none of that name."""
        plural, namespaced = KINDS[kind]
        try:
            if namespaced:
                result: dict[str, Any] = self._call(f"read {kind} {name}", self._custom.get_namespaced_custom_object,
                                                    GROUP, VERSION, namespace or self.namespace, plural, name)
            else:
                result = self._call(f"read {kind} {name}", self._custom.get_cluster_custom_object,
                                    GROUP, VERSION, plural, name)
            return result
        except ApiServerError as exc:
            if exc.status == 404:
                return None
            raise

    def objects(self, kind: str, namespace: str | None = None, *, all_namespaces: bool = False,
             label_selector: str | None = None) -> list[dict[str, Any]]:
        plural, namespaced = KINDS[kind]
        kwargs: dict[str, Any] = {"label_selector": label_selector} if label_selector else {}
        if namespaced and not all_namespaces:
            page = self._call(f"list {plural}", self._custom.list_namespaced_custom_object, GROUP, VERSION,
                              namespace or self.namespace, plural, **kwargs)
        else:
            page = self._call(f"list {plural}", self._custom.list_cluster_custom_object, GROUP, VERSION, plural,
                              **kwargs)
        items: list[dict[str, Any]] = page.get("items") or []
        return items

    def create(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        plural, namespaced = KINDS[kind]
        name = body["metadata"].get("name") or body["metadata"].get("generateName", "") + "*"
        if namespaced:
            ns = body["metadata"].get("namespace") or self.namespace
            result: dict[str, Any] = self._call(f"create {kind} {ns}/{name}",
                                                self._custom.create_namespaced_custom_object,
                                                GROUP, VERSION, ns, plural, body)
        else:
            result = self._call(f"create {kind} {name}", self._custom.create_cluster_custom_object,
                                GROUP, VERSION, plural, body)
        return result

    def patch(self, kind: str, name: str, body: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        """A merge patch (the client sends a dict body as merge-patch for custom objects)."""
        plural, namespaced = KINDS[kind]
        if namespaced:
            result: dict[str, Any] = self._call(f"change {kind} {name}", self._custom.patch_namespaced_custom_object,
                                                GROUP, VERSION, namespace or self.namespace, plural, name, body)
        else:
            result = self._call(f"change {kind} {name}", self._custom.patch_cluster_custom_object,
                                GROUP, VERSION, plural, name, body)
        return result

    def delete(self, kind: str, name: str, namespace: str | None = None) -> bool:
        """Delete an object; False when it was gone already."""
        plural, _ = KINDS[kind]
        try:
            self._call(f"delete {kind} {name}", self._custom.delete_namespaced_custom_object, GROUP, VERSION,
                       namespace or self.namespace, plural, name)
        except ApiServerError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def apply_configmap(self, body: dict[str, Any]) -> None:
        """Create the ConfigMap, or replace the one of that name."""
        ns = body["metadata"].get("namespace") or self.namespace
        name = body["metadata"]["name"]
        try:
            self._call(f"create ConfigMap {ns}/{name}", self._core.create_namespaced_config_map, ns, body)
        except ApiServerError as exc:
            if exc.status != 409:
                raise
            self._call(f"replace ConfigMap {ns}/{name}", self._core.replace_namespaced_config_map, name, ns, body)

    def events(self, namespace: str, name: str, kind: str) -> list[Any]:
        """Events about one object, oldest first."""
        page = self._call(f"list events of {kind} {name}", self._core.list_namespaced_event, namespace,
                          field_selector=f"involvedObject.name={name},involvedObject.kind={kind}")
        items: list[Any] = list(page.items or [])
        return sorted(items, key=lambda e: str(e.last_timestamp or e.event_time or ""))

"""The install manifests as data: their files read the way kustomize reads them (no kustomize here).

Pure helpers for the install tests; reads manifests/install, crds/ and manifests/samples only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "manifests" / "install"
OVERLAYS = ("base", "agents", "default", "kind")
SAMPLE_HOSTS = REPO / "manifests" / "samples" / "hosts.yaml"


def kustomization(directory: Path) -> dict[str, Any]:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (directory / name).exists():
            data: dict[str, Any] = yaml.safe_load((directory / name).read_text())
            return data
    raise AssertionError(f"{directory} has no kustomization")


def objects(directory: Path) -> list[dict[str, Any]]:
    """Every object a kustomization's resources name (directories recursively), without transformations."""
    found: list[dict[str, Any]] = []
    for entry in kustomization(directory).get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            found += objects(path)
        else:
            found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def containers(objs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, container) for every container of every Deployment and StatefulSet."""
    return [(o, c) for o in objs if o["kind"] in ("Deployment", "StatefulSet")
            for c in o["spec"]["template"]["spec"]["containers"]]


_VAR = re.compile(r"\$\((\w+)\)")


def expand(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in a container's args."""
    return _VAR.sub(lambda m: env[m.group(1)], arg)


def port(container: dict[str, Any], name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert name in ports, f"container {container['name']} has no port named {name}: {ports}"
    return int(ports[name])

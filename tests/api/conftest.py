"""Fixtures for the API's end-to-end tests: the CRDs installed once in the session's control plane."""

from __future__ import annotations

import pytest

from tests.api.manifests import NAMESPACE
from tests.kube import Kube


@pytest.fixture(scope="session")
def api(kube: Kube) -> Kube:
    """The control plane with crds/ installed (Established) and the namespace invalid cases go to."""
    kube.apply_crds()
    kube.kubectl("create", "namespace", NAMESPACE, check=False)
    return kube

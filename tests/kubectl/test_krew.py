"""The krew manifest is one krew accepts, and its archive's launcher runs the plugin."""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

from vmshift.kubectl import krew

REPO = Path(__file__).resolve().parents[2]


def test_the_manifest_has_what_krew_requires_and_the_archives_digest() -> None:
    manifest = yaml.safe_load((REPO / krew.MANIFEST).read_text())
    assert manifest["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2" and manifest["kind"] == "Plugin"
    assert manifest["metadata"]["name"] == "vmshift"
    spec = manifest["spec"]
    assert re.fullmatch(r"v\d+\.\d+\.\d+", spec["version"]), spec["version"]
    assert spec["shortDescription"] and len(spec["shortDescription"]) <= 50 and spec["homepage"].startswith("https://")
    digest = hashlib.sha256(krew.archive()).hexdigest()
    assert spec["platforms"], "no platform"
    for platform in spec["platforms"]:
        assert set(platform["selector"]["matchLabels"]) == {"os", "arch"}
        assert platform["uri"].startswith("https://") and platform["uri"].endswith(krew.ARCHIVE)
        assert platform["sha256"] == digest
        assert platform["bin"] == "kubectl-vmshift"
        names = {m["from"] for m in platform["files"]}
        assert names == set(tarfile.open(fileobj=io.BytesIO(krew.archive())).getnames())


def test_the_archive_is_reproducible() -> None:
    assert krew.archive() == krew.archive()


def test_the_launcher_runs_the_plugin_or_says_what_is_missing(tmp_path: Path) -> None:
    tarfile.open(fileobj=io.BytesIO(krew.archive())).extractall(tmp_path, filter="data")
    launcher = tmp_path / "kubectl-vmshift"
    assert os.access(launcher, os.X_OK)
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    proc = subprocess.run([str(launcher), "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: kubectl vmshift"), proc
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run(["/bin/sh", str(launcher), "--help"], capture_output=True, text=True,
                          env={"PATH": str(empty)}, timeout=60)
    assert proc.returncode == 127 and "the vmshift Python package is not installed: pip install vmshift" in proc.stderr

"""The image build's pure parts: tags from pyproject, the base recipe and its key, the wheels' keys."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest

from vmshift.devcluster import image

REPO = Path(__file__).resolve().parents[2]


def test_the_tags_are_the_pyproject_version_and_dev() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert image.image_tags(REPO) == (f"vmshift:{version}", "vmshift:dev")


def test_a_directory_without_a_dockerfile_is_named_as_no_checkout(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "1"\n')
    with pytest.raises(image.ImageBuildError, match="is not a vmshift checkout"):
        image.version(tmp_path)


def test_the_base_key_follows_the_recipe_and_only_the_recipe() -> None:
    recipe = image.BaseRecipe()
    assert recipe.key == image.BaseRecipe().key
    assert recipe.tag == f"vmshift-base:bookworm-{recipe.key}"
    assert image.BaseRecipe(packages=("python3", "ca-certificates")).key != recipe.key
    assert image.BaseRecipe(revision=recipe.revision + 1).key != recipe.key


def test_mmdebstrap_makes_a_minimal_bookworm_with_python_and_no_usrmerge(tmp_path: Path) -> None:
    command = image.BaseRecipe().mmdebstrap_command(tmp_path / "rootfs.tar")
    assert command[0] == "mmdebstrap" and command[-2:] == ["bookworm", str(tmp_path / "rootfs.tar")]
    assert "--variant=minbase" in command and "--include=python3" in command
    assert "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr" in command
    assert "--dpkgopt=path-exclude=/usr/share/doc/*" in command


def test_wheels_are_fetched_for_glibc_up_to_bookworms() -> None:
    tags = image.target_platforms("x86_64")
    assert tags[0] == "manylinux_2_36_x86_64" and "manylinux_2_17_x86_64" in tags
    assert "manylinux2014_x86_64" in tags and not any("_2_37_" in t or "_2_16_" in t for t in tags)


def _checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "operator" / "vmshift").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "Dockerfile"):
        shutil.copy(REPO / name, root / name)
    (root / "operator" / "vmshift" / "__init__.py").write_text("")
    return root


def test_the_source_key_changes_with_a_source_and_ignores_bytecode(tmp_path: Path) -> None:
    root = _checkout(tmp_path)
    key = image.source_key(root)
    cache = root / "operator" / "vmshift" / "__pycache__"
    cache.mkdir()
    (cache / "x.cpython-311.pyc").write_bytes(b"\0")
    (root / "operator" / "vmshift.egg-info").mkdir()
    (root / "operator" / "vmshift.egg-info" / "PKG-INFO").write_text("x")
    assert image.source_key(root) == key
    (root / "operator" / "vmshift" / "__init__.py").write_text("VERSION = 2\n")
    assert image.source_key(root) != key

"""Builds the container image (the operator and the agents, one image) without any registry.

Build-time only: runs mmdebstrap, pip and docker; never imported by the operator or the agent.
Three steps, each cached so that a second build takes seconds:

1. The base: a Debian rootfs (bookworm, minbase, python3) made with ``mmdebstrap`` and loaded with
   ``docker import`` as ``vmshift-base:<suite>-<key>``. The tarball is kept under
   ``~/.cache/vmshift/image/base/``, keyed by the recipe below. ``base_image=`` skips this step
   for any image with CPython 3.11 as ``python3`` (e.g. ``python:3.11-slim`` where a registry is
   reachable).
2. The wheels, fetched by pip on this machine (whose CA bundle is trusted; a container's is not):
   the runtime dependencies, keyed by the pins in pyproject.toml and the target platform, and
   vmshift's own wheel, keyed by a hash of its sources. Both go into a build context of their own
   under ``~/.cache/vmshift/image/context/``, so the build reads no package index.
3. ``docker build`` with the repository's Dockerfile, tagged ``vmshift:<version>`` and ``vmshift:dev``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vmshift.devcluster.binaries import cache_root

#: The repository this module runs from (an editable install), where the Dockerfile lives.
CHECKOUT = Path(__file__).resolve().parents[3]
IMAGE_NAME = "vmshift"
DEV_TAG = "dev"
#: CPython of the image; the wheels are fetched for it, whatever Python runs this module.
PYTHON_VERSION = "3.11"


class ImageBuildError(Exception):
    """A step of the image build failed or cannot run here; the message says what to do."""


@dataclass(frozen=True)
class BaseRecipe:
    """What goes into the Debian base image; its hash names the cached tarball and the image tag."""

    suite: str = "bookworm"
    variant: str = "minbase"
    packages: tuple[str, ...] = ("python3",)
    #: Paths dpkg does not unpack: documentation and translations nobody reads in a container.
    dpkg_excludes: tuple[str, ...] = (
        "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*", "/usr/share/doc/*",
    )
    dpkg_includes: tuple[str, ...] = ("/usr/share/doc/*/copyright",)
    #: Bumped when the commands below change in a way the fields above do not show.
    revision: int = 1

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    @property
    def tag(self) -> str:
        return f"{IMAGE_NAME}-base:{self.suite}-{self.key}"

    def mmdebstrap_command(self, target: Path) -> list[str]:
        command = ["mmdebstrap", f"--variant={self.variant}", f"--include={','.join(self.packages)}",
                   "--mode=root", "--format=tar",
                   # Merged /usr by symlinks, without the usrmerge package (which pulls in all of perl).
                   "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr"]
        command += [f"--dpkgopt=path-exclude={path}" for path in self.dpkg_excludes]
        command += [f"--dpkgopt=path-include={path}" for path in self.dpkg_includes]
        command += ['--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*',
                    self.suite, str(target)]
        return command


@dataclass(frozen=True)
class BuildResult:
    tags: tuple[str, ...]
    base_image: str
    size_bytes: int
    seconds: float
    steps: dict[str, float] = field(default_factory=dict)


def image_dir() -> Path:
    return cache_root() / "image"


def project(checkout: Path = CHECKOUT) -> dict[str, object]:
    """The ``[project]`` table of pyproject.toml."""
    pyproject = checkout / "pyproject.toml"
    if not pyproject.exists() or not (checkout / "Dockerfile").exists():
        raise ImageBuildError(f"{checkout} is not a vmshift checkout (no pyproject.toml or Dockerfile): the image "
                              f"is built from a source checkout with `make image`")
    table: dict[str, object] = tomllib.loads(pyproject.read_text())["project"]
    return table


def version(checkout: Path = CHECKOUT) -> str:
    return str(project(checkout)["version"])


def image_tags(checkout: Path = CHECKOUT) -> tuple[str, str]:
    """``vmshift:<version from pyproject>`` and ``vmshift:dev``, the tag the kind overlay names."""
    return f"{IMAGE_NAME}:{version(checkout)}", f"{IMAGE_NAME}:{DEV_TAG}"


# -- running things ------------------------------------------------------------------------------------


def _run(command: Sequence[str], what: str, *, env: dict[str, str] | None = None,
         log: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``command``; on failure raise ImageBuildError naming the step and the end of its output."""
    try:
        proc = subprocess.run(list(command), capture_output=True, text=True,
                              env={**os.environ, **(env or {})})
    except FileNotFoundError:
        raise ImageBuildError(f"{what}: {command[0]} is not installed") from None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"$ {' '.join(command)}\n{proc.stdout}{proc.stderr}")
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        where = f" (full output in {log})" if log else ""
        raise ImageBuildError(f"{what} failed with exit code {proc.returncode}{where}:\n{tail}")
    return proc


def _say(message: str) -> None:
    print(f"vmshift image: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One image build at a time on this machine (two engineers, one Docker daemon, one cache)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def docker_ready() -> None:
    """Fail with what to do when the Docker daemon does not answer."""
    if shutil.which("docker") is None:
        raise ImageBuildError("docker is not installed: install Debian's docker.io (apt-get install -y docker.io)")
    proc = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageBuildError("the Docker daemon does not answer (`docker info` failed: "
                              f"{proc.stderr.strip()}); start it, e.g. `dockerd > /tmp/dockerd.log 2>&1 &`")


def _image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


# -- step 1: the base image ----------------------------------------------------------------------------


def ensure_base(recipe: BaseRecipe | None = None) -> str:
    """The Debian base image's tag, imported from the cached rootfs tarball (made once with mmdebstrap)."""
    recipe = recipe or BaseRecipe()
    if not _image_exists(recipe.tag):
        _import_base(recipe)
    # Also under the Dockerfile's default BASE_IMAGE, for a plain `docker build` of a prepared context.
    _run(["docker", "tag", recipe.tag, f"{IMAGE_NAME}-base:{recipe.suite}"], "docker tag")
    return recipe.tag


def _import_base(recipe: BaseRecipe) -> None:
    directory = image_dir() / "base" / f"{recipe.suite}-{recipe.key}"
    tarball = directory / "rootfs.tar"
    if not tarball.exists():
        if shutil.which("mmdebstrap") is None:
            raise ImageBuildError("mmdebstrap is not installed: apt-get install -y mmdebstrap (or build on another "
                                  "base: vmshift dev image --base-image python:3.11-slim)")
        if os.geteuid() != 0:
            raise ImageBuildError("making the Debian base with mmdebstrap needs root here (--mode=root); run "
                                  "`make image` as root once, or pass --base-image")
        _say(f"making the {recipe.suite} base rootfs with mmdebstrap (a few minutes, once)")
        directory.mkdir(parents=True, exist_ok=True)
        partial = directory / "rootfs.tar.partial"
        _run(recipe.mmdebstrap_command(partial), "mmdebstrap", log=directory / "mmdebstrap.log")
        partial.rename(tarball)
    _say(f"importing {tarball} as {recipe.tag}")
    _run(["docker", "import", "--change", 'CMD ["/usr/bin/python3"]', str(tarball), recipe.tag], "docker import")


# -- step 2: the wheels --------------------------------------------------------------------------------


def target_platforms(machine: str | None = None) -> list[str]:
    """pip platform tags a Debian bookworm (glibc 2.36) container on this machine's architecture runs."""
    arch = machine or platform.machine()
    return [f"manylinux_2_{minor}_{arch}" for minor in range(36, 16, -1)] + [f"manylinux2014_{arch}"]


def source_files(checkout: Path = CHECKOUT) -> list[Path]:
    """The files vmshift's wheel is built from: pyproject.toml, README.md and the package sources."""
    files = [checkout / "pyproject.toml", checkout / "README.md"]
    for path in sorted((checkout / "operator" / "vmshift").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc" \
                and not any(part.endswith(".egg-info") for part in path.parts):
            files.append(path)
    return files


def source_key(checkout: Path = CHECKOUT) -> str:
    digest = hashlib.sha256()
    for path in source_files(checkout):
        digest.update(str(path.relative_to(checkout)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def ensure_dependency_wheels(checkout: Path = CHECKOUT) -> Path:
    """A directory of wheels for every runtime dependency (and pip, the installer), plus requirements.txt."""
    dependencies = [str(d) for d in project(checkout)["dependencies"]]  # type: ignore[attr-defined]
    platforms = target_platforms()
    key = hashlib.sha256(json.dumps([dependencies, PYTHON_VERSION, platforms]).encode()).hexdigest()[:16]
    directory = image_dir() / "wheels" / f"deps-{key}"
    if (directory / "requirements.txt").exists():
        return directory
    _say(f"fetching the runtime dependencies as wheels for CPython {PYTHON_VERSION} into {directory}")
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--dest", str(partial),
               "--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp",
               "--abi", f"cp{PYTHON_VERSION.replace('.', '')}", "--abi", "abi3", "--abi", "none"]
    for tag in platforms:
        command += ["--platform", tag]
    _run([*command, *dependencies, "pip"], "pip download of the runtime dependencies",
         log=image_dir() / "wheels" / f"deps-{key}.log")
    pins = []
    for wheel in sorted(partial.glob("*.whl")):
        name, wheel_version = wheel.name.split("-")[:2]
        if name.lower() != "pip":
            pins.append(f"{name}=={wheel_version}")
    (partial / "requirements.txt").write_text("\n".join(pins) + "\n")
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    return directory


def ensure_vmshift_wheel(checkout: Path = CHECKOUT) -> Path:
    """vmshift's own wheel, rebuilt only when a source file changed (so Docker's layer cache holds)."""
    directory = image_dir() / "wheels" / f"vmshift-{source_key(checkout)}"
    wheels = sorted(directory.glob("vmshift-*.whl"))
    if wheels:
        return wheels[0]
    _say(f"building vmshift's wheel into {directory}")
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    # From a copy of exactly the hashed files: setuptools' in-tree build/ would keep deleted modules.
    sources = partial / "src"
    for path in source_files(checkout):
        target = sources / path.relative_to(checkout)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    _run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-deps", "--wheel-dir",
          str(partial), str(sources)], "building vmshift's wheel", log=partial / "pip-wheel.log")
    shutil.rmtree(sources)
    for stale in directory.parent.glob("vmshift-*"):  # wheels of older sources are never used again
        if stale.is_dir() and stale.name != directory.name and not stale.name.endswith(".partial"):
            shutil.rmtree(stale, ignore_errors=True)
        elif stale.suffix == ".log":
            stale.unlink()
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    return sorted(directory.glob("vmshift-*.whl"))[0]


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def prepare_context(deps: Path, app_wheel: Path, checkout: Path = CHECKOUT) -> Path:
    """The build context: ``deps/`` (wheels and requirements.txt) and ``app/`` (vmshift's wheel)."""
    context = image_dir() / "context"
    shutil.rmtree(context, ignore_errors=True)
    (context / "deps").mkdir(parents=True)
    (context / "app").mkdir()
    for path in deps.iterdir():
        _link_or_copy(path, context / "deps" / path.name)
    _link_or_copy(app_wheel, context / "app" / app_wheel.name)
    shutil.copy2(checkout / "Dockerfile", context / "Dockerfile")
    return context


# -- step 3: docker build ------------------------------------------------------------------------------


def build(base_image: str | None = None, checkout: Path = CHECKOUT) -> BuildResult:
    """Build ``vmshift:<version>`` and ``vmshift:dev``; every step is skipped when its cached output is current."""
    started = time.monotonic()
    steps: dict[str, float] = {}
    docker_ready()
    tags = image_tags(checkout)
    with _locked(image_dir()):
        mark = time.monotonic()
        base = base_image or ensure_base()
        steps["base"] = time.monotonic() - mark
        mark = time.monotonic()
        context = prepare_context(ensure_dependency_wheels(checkout), ensure_vmshift_wheel(checkout), checkout)
        steps["wheels"] = time.monotonic() - mark
        mark = time.monotonic()
        command = ["docker", "build", "--build-arg", f"BASE_IMAGE={base}",
                   "--label", f"org.opencontainers.image.version={version(checkout)}"]
        for tag in tags:
            command += ["--tag", tag]
        # The classic builder: the Dockerfile needs nothing of BuildKit, and Debian's docker.io has no buildx.
        _run([*command, str(context)], "docker build", env={"DOCKER_BUILDKIT": "0"},
             log=image_dir() / "docker-build.log")
        steps["build"] = time.monotonic() - mark
    size = int(_run(["docker", "image", "inspect", "--format", "{{.Size}}", tags[0]], "docker image inspect")
               .stdout.strip())
    return BuildResult(tags=tags, base_image=base, size_bytes=size, seconds=time.monotonic() - started, steps=steps)


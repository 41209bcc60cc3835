"""Builds the real guest that the QEMU driver boots: a Debian kernel and a busybox initramfs.

Talks to the file system and runs Debian's tools (``apt-cache``, ``apt-get download``,
``dpkg-deb``, ``tar``, ``cpio``); starts nothing and installs nothing. Nothing is downloaded at
run time: ``ensure()`` finds the image in the cache or builds it there once.

The kernel is the one ``linux-image-amd64`` (Debian's metapackage) depends on, taken from its
.deb (only ``/boot/vmlinuz-*``); busybox is ``busybox-static`` from its .deb; ``/init`` is
``vmshift.hypervisor.qemu.workload.INIT_SCRIPT``. The initramfs is an uncompressed ``newc`` cpio
archive (about 2 MiB: decompressing costs more than it saves under TCG). The image lives in
``~/.cache/vmshift/guest/<key>/`` (``vmlinuz``, ``initrd.cpio``, ``image.json``) where the key
names both package versions and a digest of the init script, so a new kernel from Debian's
security updates or a changed workload builds a new image beside the old one. ``apt-get update``
must have run once (Debian's package lists name the versions); .ci/run does it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vmshift.devcluster.binaries import cache_root
from vmshift.devcluster.cachedbuild import build_once
from vmshift.hypervisor.qemu.workload import INIT_SCRIPT

KERNEL_METAPACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"
#: Bump when the layout of the image changes (the key changes with it).
LAYOUT = 1
_DEPENDS = re.compile(r"^(linux-image-[0-9][^ ,(]*-amd64)\b")


class GuestImageError(RuntimeError):
    """The image cannot be built here; the message says what to install or run."""


@dataclass(frozen=True)
class Packages:
    """The Debian packages (name, version) an image is made from."""

    kernel: str
    kernel_version: str
    busybox_version: str

    def key(self) -> str:
        init = hashlib.sha256(f"{LAYOUT}\n{INIT_SCRIPT}".encode()).hexdigest()[:12]
        raw = f"{self.kernel}_{self.kernel_version}-busybox_{self.busybox_version}-init_{init}"
        return re.sub(r"[^A-Za-z0-9._+-]", "_", raw)


@dataclass(frozen=True)
class GuestImage:
    """A built image: boot ``kernel`` with ``initrd``."""

    directory: Path
    kernel: Path
    initrd: Path
    packages: Packages

    @classmethod
    def load(cls, directory: Path) -> GuestImage:
        meta = json.loads((directory / "image.json").read_text())
        return cls(directory=directory, kernel=directory / "vmlinuz", initrd=directory / "initrd.cpio",
                   packages=Packages(meta["kernel"], meta["kernelVersion"], meta["busyboxVersion"]))


def _run(args: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise GuestImageError(f"{args[0]} is not installed: the guest image is built with Debian's apt, dpkg-deb, "
                              "tar and cpio (apt-get install cpio)") from None
    if proc.returncode != 0:
        raise GuestImageError(f"{' '.join(args)} failed (exit {proc.returncode}): "
                              f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def _field(package: str, name: str) -> str:
    text = _run(["apt-cache", "show", "--no-all-versions", package])
    for line in text.splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise GuestImageError(f"apt-cache show {package} has no {name} field; run apt-get update")


def resolve() -> Packages:
    """The package versions Debian's lists name now (the image key)."""
    try:
        depends = _field(KERNEL_METAPACKAGE, "Depends")
    except GuestImageError as exc:
        raise GuestImageError(f"cannot tell which kernel {KERNEL_METAPACKAGE} stands for ({exc}); run "
                              "apt-get update so that Debian's package lists are present") from None
    match = next((m for part in depends.split(",") if (m := _DEPENDS.match(part.strip()))), None)
    if match is None:
        raise GuestImageError(f"{KERNEL_METAPACKAGE} depends on {depends!r}, which names no linux-image-*-amd64")
    kernel = match[1]
    return Packages(kernel=kernel, kernel_version=_field(kernel, "Version"),
                    busybox_version=_field(BUSYBOX_PACKAGE, "Version"))


def image_dir(packages: Packages) -> Path:
    return cache_root() / "guest" / packages.key()


def _build(packages: Packages, scratch: Path, log: Callable[[str], None]) -> None:
    debs = scratch / "debs"
    root = scratch / "root"
    debs.mkdir()
    (root / "bin").mkdir(parents=True)
    log(f"downloading {packages.kernel} {packages.kernel_version} and {BUSYBOX_PACKAGE} "
        f"{packages.busybox_version} (about 70 MB)")
    _run(["apt-get", "download", "-q", f"{packages.kernel}={packages.kernel_version}",
          f"{BUSYBOX_PACKAGE}={packages.busybox_version}"], cwd=debs)
    kernel_deb = next(debs.glob(f"{packages.kernel}_*.deb"))
    busybox_deb = next(debs.glob(f"{BUSYBOX_PACKAGE}_*.deb"))
    boot = scratch / "kernel"
    boot.mkdir()
    tar = subprocess.Popen(["tar", "-x", "-C", str(boot), "--wildcards", "./boot/vmlinuz-*"], stdin=subprocess.PIPE)
    deb = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(kernel_deb)], stdout=tar.stdin, check=False)
    assert tar.stdin is not None
    tar.stdin.close()
    if tar.wait() != 0 or deb.returncode != 0:
        raise GuestImageError(f"could not extract /boot/vmlinuz-* from {kernel_deb.name}")
    vmlinuz = next((boot / "boot").glob("vmlinuz-*"))
    vmlinuz.rename(scratch / "vmlinuz")
    extracted = scratch / "busybox"
    _run(["dpkg-deb", "-x", str(busybox_deb), str(extracted)])
    shutil.copy2(extracted / "bin" / "busybox", root / "bin" / "busybox")
    init = root / "init"
    init.write_text(INIT_SCRIPT)
    init.chmod(0o755)
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    with open(scratch / "initrd.cpio", "wb") as out:
        proc = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet", "--reproducible"], cwd=root,
                              input="\n".join([".", *names]) + "\n", stdout=out, stderr=subprocess.PIPE,
                              text=True, check=False)
    if proc.returncode != 0:
        raise GuestImageError(f"cpio failed: {proc.stderr.strip()}")
    (scratch / "image.json").write_text(json.dumps({
        "kernel": packages.kernel, "kernelVersion": packages.kernel_version,
        "busyboxVersion": packages.busybox_version, "layout": LAYOUT,
    }, indent=2) + "\n")
    for leftover in (debs, boot, extracted, root):
        shutil.rmtree(leftover)


def ensure(log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> GuestImage:
    """The guest image for today's package versions, built into the cache first if it is not there.

    ``$VMSHIFT_GUEST_IMAGE`` names an image directory to use instead (one this function built).
    """
    override = os.environ.get("VMSHIFT_GUEST_IMAGE")
    if override:
        directory = Path(override)
        if not (directory / "image.json").is_file():
            raise GuestImageError(f"VMSHIFT_GUEST_IMAGE={override} holds no image.json; point it at a directory "
                                  "that `vmshift dev guest-image` built")
        return GuestImage.load(directory)
    packages = resolve()
    target = image_dir(packages)
    if not target.is_dir():
        started = time.monotonic()
        build_once(target, lambda scratch: _build(packages, scratch, log))
        log(f"built the guest image in {time.monotonic() - started:.0f}s: {target}")
    return GuestImage.load(target)

"""The image, run with plain `docker run` the way the manifests run it: read-only root, no capabilities,
user 10001; the agent answers its probes, the operator runs with in-cluster credentials.

Needs Docker (marker ``image``): builds with ``vmshift dev image`` first (seconds when cached).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hypervisor.helpers import finished, running_vm
from tests.install.manifests import INSTALL, REPO
from tests.kube import Kube, own_control_plane, wait_for
from vmshift.devcluster import image
from vmshift.devcluster.stack import _free_port
from vmshift.hypervisor.client import HypervisorClient, begin_migration
from vmshift.hypervisor.protocol import MigrationPhase, VmState

pytestmark = [pytest.mark.image, pytest.mark.timeout(1500)]

#: What the manifests' securityContext asks, as docker run flags.
LOCKED_DOWN = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
               "--user", "10001:10001"]


@pytest.fixture(scope="module")
def built() -> image.BuildResult:
    return image.build()


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc


@pytest.fixture
def containers() -> Iterator[list[str]]:
    """Names of the containers a test starts; removed at its end."""
    names: list[str] = []
    yield names
    for name in names:
        docker("rm", "-f", name, check=False)


def _http(url: str, token: str | None = None) -> tuple[int, str] | None:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except OSError:
        return None


def test_both_tags_name_one_small_image(built: image.BuildResult) -> None:
    ids = {docker("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip() for tag in built.tags}
    assert len(ids) == 1 and built.tags == image.image_tags()
    assert built.size_bytes < 300_000_000, f"the image grew to {built.size_bytes / 1e6:.0f} MB"
    config = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", built.tags[0]).stdout)
    assert config["User"] == "10001:10001"
    found = docker("run", "--rm", "--entrypoint", "/bin/sh", built.tags[0], "-c",
                   "command -v vmshift pip pip3 gcc || true").stdout.split()
    assert found[0] == "/opt/vmshift-app/bin/vmshift", found
    assert not {"pip", "pip3", "gcc"} & {Path(p).name for p in found[1:]}, f"build tools in the runtime: {found}"


def test_a_second_build_reuses_every_step(built: image.BuildResult) -> None:
    again = image.build()
    assert again.tags == built.tags and again.size_bytes == built.size_bytes
    assert again.seconds < 60, f"a warm build took {again.seconds:.0f} s ({again.steps})"


def test_the_operator_command_starts(built: image.BuildResult) -> None:
    proc = docker("run", "--rm", *LOCKED_DOWN, built.tags[1], "operator", "--help")
    assert "--liveness" in proc.stdout and "--agent-token-secret" in proc.stdout


def test_the_agent_answers_its_probes_without_a_token_and_its_api_only_with_one(
        built: image.BuildResult, containers: list[str], tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("image-test-token\n")
    token_file.chmod(0o644)
    name = f"vmshift-agent-test-{uuid.uuid4().hex[:8]}"
    containers.append(name)
    docker("run", "-d", "--name", name, *LOCKED_DOWN, "-v", f"{token_file}:/var/run/vmshift/agent-token/token:ro",
           built.tags[1], "agent", "--name=h-test", "--cpu-model=icelake",
           "--token-file=/var/run/vmshift/agent-token/token", "--listen=0.0.0.0", "--api-port=8443",
           "--migration-port=8444")
    address = docker("inspect", "--format", "{{.NetworkSettings.IPAddress}}", name).stdout.strip()
    base = f"http://{address}:8443"
    wait_for(lambda: _http(f"{base}/healthz"), f"the agent container at {base}", 30,
             describe=lambda: docker("logs", name, check=False).stderr)
    assert _http(f"{base}/healthz") == (200, "ok\n")
    assert _http(f"{base}/readyz") == (200, "ok\n")
    assert (_http(f"{base}/v1/host") or (0, ""))[0] == 401
    status, body = _http(f"{base}/v1/host", "image-test-token") or (0, "")
    assert status == 200 and json.loads(body)["name"] == "h-test"


def _start_agent(tag: str, containers: list[str], token_file: Path, host: str) -> str:
    """An agent container as the StatefulSet runs one: it advertises its own address, as a pod its pod IP."""
    name = f"vmshift-agent-test-{uuid.uuid4().hex[:8]}"
    containers.append(name)
    command = ("exec vmshift agent --name=" + host + " --cpu-model=icelake --shared-volume=csv-01 "
               "--token-file=/var/run/vmshift/agent-token/token --listen=0.0.0.0 --api-port=8443 "
               '--migration-port=8444 --advertise-host="$(hostname -i)"')
    docker("run", "-d", "--name", name, *LOCKED_DOWN, "-v", f"{token_file}:/var/run/vmshift/agent-token/token:ro",
           "--entrypoint", "/bin/sh", tag, "-c", command)
    address = docker("inspect", "--format", "{{.NetworkSettings.IPAddress}}", name).stdout.strip()
    wait_for(lambda: _http(f"http://{address}:8443/readyz"), f"agent container {host} at {address}", 30,
             describe=lambda: docker("logs", name, check=False).stderr)
    return f"http://{address}:8443"


def test_a_live_migration_streams_from_container_to_container(
        built: image.BuildResult, containers: list[str], tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("image-test-token\n")
    token_file.chmod(0o644)
    source_url = _start_agent(built.tags[1], containers, token_file, "h-src")
    target_url = _start_agent(built.tags[1], containers, token_file, "h-dst")

    async def migrate() -> None:
        async with HypervisorClient(source_url, "image-test-token") as source, \
                HypervisorClient(target_url, "image-test-token") as target:
            await running_vm(source, "vm-1", memory_mib=256, dirty=20.0, working_set=32.0, prefill=128.0)
            await begin_migration(source, target, "vm-1", "mig-1")
            status = await finished(source, "mig-1")
            assert status.phase is MigrationPhase.Succeeded, status.model_dump_json()
            assert status.peer and status.peer.startswith(target_url.removeprefix("http://").split(":")[0]), \
                f"the stream went to {status.peer}, not to the target container"
            assert status.source_digest == status.target_digest and status.transferred_mib >= 128
            assert (await target.get_vm("vm-1")).state is VmState.Running
            assert (await source.get_vm("vm-1")).state is VmState.MigratedAway
    asyncio.run(migrate())


@pytest.fixture(scope="module")
def plane() -> Iterator[Kube]:
    with own_control_plane("image") as kube:
        yield kube


def test_the_operator_runs_in_the_image_with_in_cluster_credentials(
        built: image.BuildResult, plane: Kube, containers: list[str], tmp_path: Path) -> None:
    """The service account's files where a pod has them, the API server as KUBERNETES_SERVICE_*: the
    official client's in-cluster loader, Kopf, the token Secrets and status writes, all from the image."""
    plane.kubectl("apply", "-k", str(INSTALL / "kind"))
    plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(REPO / "crds"))
    plane.kubectl("apply", "-k", str(REPO / "manifests" / "samples"))
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(
        plane.kubectl("create", "token", "vmshift-operator", "-n", "vmshift-system").stdout.strip())
    shutil.copy(Path(plane.state.dir) / "pki" / "ca.crt", account / "ca.crt")
    (account / "namespace").write_text("vmshift-system")
    for path in (account, *account.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    server = plane.state.server.removeprefix("https://")
    host, port = server.rsplit(":", 1)
    health = _free_port()
    name = f"vmshift-operator-test-{uuid.uuid4().hex[:8]}"
    containers.append(name)
    # Host networking: the embedded API server listens on this machine's loopback only.
    docker("run", "-d", "--name", name, "--network", "host", *LOCKED_DOWN,
           "-e", f"KUBERNETES_SERVICE_HOST={host}", "-e", f"KUBERNETES_SERVICE_PORT={port}",
           "-v", f"{account}:/var/run/secrets/kubernetes.io/serviceaccount:ro",
           built.tags[1], "operator", "--standalone", f"--liveness=http://127.0.0.1:{health}/healthz",
           "--agent-token-secret=vmshift-agent-token", "--webhook-token-secret=vmshift-webhook-token",
           f"--webhook-port={_free_port()}")
    logs = lambda: docker("logs", "--tail", "30", name, check=False).stderr  # noqa: E731
    wait_for(lambda: _http(f"http://127.0.0.1:{health}/healthz"), "the operator container's liveness endpoint", 90,
             describe=logs)
    for secret in ("vmshift-agent-token", "vmshift-webhook-token"):
        plane.kubectl("get", "secret", secret, "-n", "vmshift-system")

    def unreachable() -> bool:
        hosts = plane.get_json("hosts")["items"]
        return bool(hosts) and all((h.get("status") or {}).get("phase") == "Unreachable" for h in hosts)
    wait_for(unreachable, "every sample Host marked Unreachable by the operator in the container", 60,
             describe=lambda: plane.kubectl("get", "hosts").stdout + logs())
    assert "Forbidden" not in docker("logs", name).stderr

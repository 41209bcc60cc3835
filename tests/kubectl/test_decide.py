"""The plugin's pure decisions: flags, the objects it creates, which migration a name means, exit statuses."""

from __future__ import annotations

import base64
import io
import tarfile

import pytest

from vmshift.api.reasons import MigrationMode, MigrationPhase
from vmshift.kubectl import decide
from vmshift.kubectl.decide import UsageError

from .objects import host, migration


@pytest.mark.parametrize(("text", "ms"), [("50ms", 50), ("50", 50), ("0.5s", 500), ("2m", 120000), (" 1 s ", 1000),
                                          ("600000ms", 600000)])
def test_downtime_parses_units(text: str, ms: int) -> None:
    assert decide.parse_downtime_ms(text) == ms


@pytest.mark.parametrize(("text", "words"), [("soon", "is not a duration"), ("0ms", "between 1 ms and 10 minutes"),
                                             ("11m", "between 1 ms"), ("-5ms", "is not a duration")])
def test_downtime_refuses_what_it_cannot_use(text: str, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        decide.parse_downtime_ms(text)


def test_mode_is_case_insensitive_and_names_the_choices() -> None:
    assert decide.parse_mode("live") is MigrationMode.Live
    with pytest.raises(UsageError, match="use Auto, Live or Quick"):
        decide.parse_mode("fast")


def test_migration_body_carries_only_what_was_asked() -> None:
    body = decide.migration_body("web-1", "demo", target=None, mode=MigrationMode.Auto, max_downtime_ms=None)
    assert body["metadata"]["generateName"] == "web-1-" and body["metadata"]["namespace"] == "demo"
    assert body["metadata"]["labels"][decide.VM_LABEL] == "web-1"
    assert body["spec"] == {"vmName": "web-1", "mode": "Auto", "reason": "kubectl vmshift migrate"}
    body = decide.migration_body("web-1", "demo", target="h2", mode=MigrationMode.Quick, max_downtime_ms=80,
                                 reason="rebalance")
    assert body["spec"] == {"vmName": "web-1", "mode": "Quick", "targetHost": "h2", "maxDowntimeMs": 80,
                            "reason": "rebalance"}


def test_active_migration_is_the_newest_unfinished_one_of_that_vm() -> None:
    ms = [migration("a", "web", phase="Succeeded", created="2026-01-01T00:00:00Z"),
          migration("b", "web", phase="Transferring", created="2026-01-01T00:01:00Z"),
          migration("c", "db", phase="Transferring", created="2026-01-01T00:02:00Z"),
          migration("d", "web", created="2026-01-01T00:03:00Z")]
    active = decide.active_migration(ms, "web")
    assert active is not None and active["metadata"]["name"] == "d"
    assert [m["metadata"]["name"] for m in decide.migrations_of(ms, "web")] == ["a", "b", "d"]
    assert decide.active_migration(ms[:1], "web") is None


def test_cancel_takes_a_migration_name_or_a_migrating_vm() -> None:
    ms = [migration("web-x1", "web", phase="Transferring"), migration("db-old", "db", phase="Failed")]
    assert decide.cancel_target("web-x1", "ns", ms, vm_exists=False) == "web-x1"
    assert decide.cancel_target("web", "ns", ms, vm_exists=True) == "web-x1"
    with pytest.raises(UsageError, match="already ended \\(Failed\\)"):
        decide.cancel_target("db-old", "ns", ms, vm_exists=False)
    with pytest.raises(UsageError, match="VirtualMachine ns/db is not migrating"):
        decide.cancel_target("db", "ns", ms, vm_exists=True)
    with pytest.raises(UsageError, match="no VirtualMachine or VirtualMachineMigration named nope in namespace ns"):
        decide.cancel_target("nope", "ns", ms, vm_exists=False)


def test_exit_status_is_zero_only_for_success() -> None:
    assert decide.exit_status(MigrationPhase.Succeeded) == decide.EXIT_OK
    assert decide.exit_status(MigrationPhase.Failed) == decide.exit_status(MigrationPhase.Cancelled) == 1


def test_drain_outcome_waits_for_the_current_drain() -> None:
    h = host("h1")
    assert not decide.drain_outcome(h, since=None).done
    h["status"]["drain"] = {"state": "Completed", "moved": 3, "total": 3}  # an old drain: no trigger any more
    assert not decide.drain_outcome(h, since=None).done
    h["status"]["drain"]["trigger"] = "spec.maintenance"
    assert decide.drain_outcome(h, since=None) == decide.DrainOutcome(True, 0, "Completed")
    h["status"]["drain"]["state"] = "Blocked"
    assert decide.drain_outcome(h, since=None) == decide.DrainOutcome(True, 1, "Blocked")
    h["status"]["drain"]["startedAt"] = "2026-01-01T00:00:00Z"
    assert not decide.drain_outcome(h, since="2026-01-02T00:00:00Z").done


def test_choose_volume_prefers_the_most_mounted() -> None:
    hosts = [host("a", volumes=("csv-2", "csv-1")), host("b", volumes=("csv-2",)), host("c", volumes=())]
    assert decide.choose_volume(hosts) == "csv-2"
    with pytest.raises(UsageError, match="pass --volume"):
        decide.choose_volume([host("c", volumes=())])


OVF = b'<?xml version="1.0"?><Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"/>'


def test_import_of_an_ovf_puts_it_in_a_configmap() -> None:
    request = decide.import_request("/tmp/My App.ovf", OVF, namespace="ns", name=None, volume="csv-1")
    assert request.kind == "OVF"
    assert request.configmap is not None and request.configmap["data"] == {"my-app.ovf": OVF.decode()}
    assert request.vm_import["metadata"]["name"] == "my-app"
    assert request.vm_import["spec"] == {
        "source": {"ovf": {"configMapRef": {"name": "my-app-source", "key": "my-app.ovf"}}},
        "target": {"name": "my-app", "volume": "csv-1", "compatibility": False}}


def test_import_of_an_ova_goes_as_binary_data() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("app.ovf")
        info.size = len(OVF)
        tar.addfile(info, io.BytesIO(OVF))
    data = buffer.getvalue()
    request = decide.import_request("app.ova", data, namespace="ns", name="web", volume="v")
    assert request.kind == "OVA" and request.configmap is not None
    assert base64.b64decode(request.configmap["binaryData"]["app.ova"]) == data
    with pytest.raises(UsageError, match="is not an OVA: an OVA is an uncompressed tar"):
        decide.import_request("app.ova", b"PK\x03\x04zip", namespace="ns", name=None, volume="v")


def test_import_of_an_inventory_is_validated_and_inline() -> None:
    good = (b"physical:\n  hostname: srv-1\n  cpus: {cores: 4}\n  memoryMiB: 8192\n  os: Linux\n"
            b"  disks: [{name: sda, sizeGiB: 100, bus: SATA}]\n"
            b"  nics: [{name: eth0, macAddress: '00:11:22:33:44:55', speedMbps: 1000, driver: e1000e}]\n")
    request = decide.import_request("srv-1.yaml", good, namespace="ns", name=None, volume="v")
    assert request.configmap is None and request.kind == "physical inventory"
    assert request.vm_import["spec"]["source"]["physical"]["hostname"] == "srv-1"
    with pytest.raises(UsageError, match=r"bad.yaml is not a valid physical inventory: memoryMiB: "):
        decide.import_request("bad.yaml", good.replace(b"8192", b"0"), namespace="ns", name=None, volume="v")
    with pytest.raises(UsageError, match="is not valid YAML"):
        decide.import_request("x.yaml", b"a: [", namespace="ns", name=None, volume="v")
    with pytest.raises(UsageError, match=r"cannot tell what to import from \.vmdk"):
        decide.import_request("disk.vmdk", b"", namespace="ns", name=None, volume="v")


def test_release_annotation_comes_from_the_policy_holding_the_host() -> None:
    policy = {"spec": {"match": {"alertname": "FanFailure"}, "action": "Quarantine",
                       "release": {"mode": "Annotation", "annotation": "example.com/fixed"}}}
    held = {"remediation": {"policy": "fans", "action": "Quarantine"}}
    assert decide.release_annotation("h1", held, policy) == "example.com/fixed"
    default = {"spec": {"match": {"alertname": "FanFailure"}, "action": "Quarantine",
                        "release": {"mode": "Annotation"}}}
    assert decide.release_annotation("h1", held, default) == "vmshift.io/release-remediation"
    with pytest.raises(UsageError, match="no remediation holds h1"):
        decide.release_annotation("h1", {}, None)
    with pytest.raises(UsageError, match="releases h1 by itself once its alerts stay resolved for 300 s"):
        decide.release_annotation("h1", held, {"spec": {"match": {"alertname": "X"}, "action": "Quarantine"}})
    with pytest.raises(UsageError, match="no longer exists"):
        decide.release_annotation("h1", held, None)

"""``kubectl vmshift`` end to end: the real kubectl runs the plugin from PATH against the real API server,
with the operator and agent processes running; exit statuses and messages as a person sees them,
and the progress bar read off a real terminal (tmux).

The module's hosts carry the label ``pool=cli`` (migrations) and ``pool=cli-drain`` (drains), so
nothing here moves the shared e2e fleet's VMs, and the drains move only this module's VMs.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conversion.conftest import shared_dir
from tests.e2e.conftest import Fleet
from tests.kube import wait_for
from vmshift.devcluster.stack import HostPlan
from vmshift.hypervisor.protocol import ComponentFault, SensorChange

pytestmark = pytest.mark.e2e

VENV_BIN = str(Path(sys.executable).parent)
#: An ANSI escape sequence: colour or cursor movement, which must not reach a pipe.
ANSI = re.compile(r"\x1b\[")

FAST, SLOW, DRAIN_A, DRAIN_B = "cli-a", "cli-slow", "cli-d1", "cli-d2"
#: 200 Mbps into the slow host: a 768 MiB guest takes about half a minute to move, long enough to watch.
SLOW_MBPS = 200
#: A quiet guest (MiB/s dirtied in a small hot set) converges at that rate under the default policy's
#: 1 ms switchover threshold; a busier one would fail NotConverging, which is not what these tests watch.
QUIET = {"dirty": 2.0, "working_set": 8}
PLANS = [
    HostPlan(FAST, "icelake", labels={"pool": "cli"}),
    HostPlan(SLOW, "icelake", bandwidth_mbps=SLOW_MBPS, labels={"pool": "cli"}),
    HostPlan(DRAIN_A, "icelake", labels={"pool": "cli-drain"}),
    HostPlan(DRAIN_B, "haswell", labels={"pool": "cli-drain"}),
]


@dataclass
class Plugin:
    fleet: Fleet
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """``kubectl vmshift ARGS``: kubectl finds kubectl-vmshift on PATH, as for a user."""
        return subprocess.run(["kubectl", "vmshift", *args], capture_output=True, text=True, env=self.env,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def ok(self, *args: str, timeout: float = 180) -> str:
        proc = self.run(*args, timeout=timeout)
        assert proc.returncode == 0, f"kubectl vmshift {' '.join(args)} exited {proc.returncode}:\n" \
                                     f"{proc.stdout}\n{proc.stderr}\n{self.fleet.stack.operator_log_tail(20)}"
        assert not ANSI.search(proc.stdout + proc.stderr), f"colour codes in a pipe: {proc.stdout!r}"
        return proc.stdout

    def vm(self, ns: str, name: str, host: str, **kw: Any) -> str:
        """A running VM started on ``host`` and left free to move; its uid."""
        self.fleet.running_vm(ns, name, host=host, timeout=120, **kw)
        return self.fleet.uid(ns, name)


@pytest.fixture(scope="module")
def plugin(fleet: Fleet) -> Iterator[Plugin]:
    fleet.stack.start_hosts(PLANS)
    try:
        for plan in PLANS:
            fleet.wait_phase("host", plan.name, None, {"Ready"}, timeout=90)
        env = {**fleet.kube.env, "PATH": os.pathsep.join([fleet.kube.env["PATH"], VENV_BIN]), "COLUMNS": "160"}
        env.pop("NO_COLOR", None)
        yield Plugin(fleet, env)
    finally:
        fleet.kube.kubectl("delete", "remediationpolicies.vmshift.io", "cli-fan", "--ignore-not-found")
        fleet.kube.kubectl("delete", "vsvm", "-A", "-l", "suite=cli", "--wait=true", "--timeout=60s", check=False)
        fleet.stack.remove_hosts([p.name for p in PLANS])


def _labels(name: str) -> dict[str, str]:
    return {"app": name, "suite": "cli"}


def test_kubectl_finds_the_plugin_and_its_help_reads_as_a_users(plugin: Plugin) -> None:
    out = plugin.ok("--help")
    assert out.startswith("usage: kubectl vmshift"), out
    for words in ("Move virtual machines between hosts", "migrate", "drain", "why", "import", "examples:",
                  "Exit status:"):
        assert words in out, f"{words!r} missing from the help:\n{out}"
    assert "pure" not in out and "Glue" not in out, "the help shows a developer's docstring"
    migrate = plugin.ok("migrate", "--help")
    assert "--max-downtime DURATION" in migrate and "like 50ms" in migrate, migrate
    listed = subprocess.run(["kubectl", "plugin", "list"], capture_output=True, text=True, env=plugin.env)
    assert f"{VENV_BIN}/kubectl-vmshift" in listed.stdout, listed


def test_migrate_waits_and_reports_downtime_and_memory_check_then_history(plugin: Plugin) -> None:
    ns = plugin.fleet.namespace()
    plugin.vm(ns, "web", FAST, compatibility=True, labels=_labels("web"), **QUIET)
    out = plugin.ok("migrate", "web", "--to", SLOW, "--wait", "--max-downtime", "300ms", "-n", ns)
    lines = out.splitlines()
    assert lines[0].startswith(f"Migration {ns}/web-") and f"from {FAST} to {SLOW}" in lines[0], out
    assert any(re.match(r"^Transferring\s+\d+%\s+round \d+ · .* MiB sent · .* left · dirty .* · link .* ETA", ln)
               for ln in lines), f"no plain progress line:\n{out}"
    assert f"Succeeded: web now runs on {SLOW}" in out, out
    assert re.search(r"Downtime \d+\.\d ms; memory verified \(digests match\)\.", out), out
    assert plugin.fleet.status("vsvm", "web", ns)["host"] == SLOW
    name = lines[0].split()[1].split("/")[1].rstrip(":")
    assert plugin.fleet.get("vsmig", name, ns)["spec"]["maxDowntimeMs"] == 300

    table = plugin.ok("history", "web", "-n", ns)
    header, row = table.splitlines()[0], table.splitlines()[1]
    assert header.split() == ["MIGRATION", "PHASE", "FROM", "TO", "MODE", "DOWNTIME", "TOOK", "REASON", "AGE"]
    assert row.split()[:4] == [name, "Succeeded", FAST, SLOW], table
    data = json.loads(plugin.ok("history", "web", "-n", ns, "-o", "json"))
    assert [m["metadata"]["name"] for m in data] == [name] and data[0]["status"]["phase"] == "Succeeded"
    assert yaml.safe_load(plugin.ok("history", "web", "-n", ns, "-o", "yaml"))[0]["spec"]["vmName"] == "web"


def test_unknown_vm_host_and_bad_flags_exit_2_naming_what_is_wrong(plugin: Plugin) -> None:
    ns = plugin.fleet.namespace()
    proc = plugin.run("migrate", "nope", "-n", ns)
    assert proc.returncode == 2, proc
    assert proc.stderr.strip() == (f"error: there is no VirtualMachine named nope in namespace {ns} "
                                   f"(kubectl get vsvm -n {ns}; -n chooses another namespace)"), proc.stderr
    plugin.vm(ns, "app", FAST, compatibility=True, labels=_labels("app"))
    proc = plugin.run("migrate", "app", "--to", "h-nowhere", "-n", ns)
    assert proc.returncode == 2 and "there is no Host named h-nowhere" in proc.stderr, proc
    proc = plugin.run("migrate", "app", "--max-downtime", "soon", "-n", ns)
    assert proc.returncode == 2 and "--max-downtime 'soon' is not a duration" in proc.stderr, proc
    proc = plugin.run("migrate", "app", "--mode", "Teleport", "-n", ns)
    assert proc.returncode == 2 and "use Auto, Live or Quick" in proc.stderr, proc
    for command in ("history", "why"):
        proc = plugin.run(command, "nope", "-n", ns)
        assert proc.returncode == 2 and "there is no VirtualMachine named nope" in proc.stderr, (command, proc)
    for command in ("drain", "undrain", "cordon", "uncordon", "release"):
        proc = plugin.run(command, "h-nowhere")
        assert proc.returncode == 2 and "there is no Host named h-nowhere" in proc.stderr, (command, proc)
    proc = plugin.run("cancel", "nope", "-n", ns)
    assert proc.returncode == 2 and "no VirtualMachine or VirtualMachineMigration named nope" in proc.stderr, proc
    proc = plugin.run("cancel", "app", "-n", ns)
    assert proc.returncode == 2 and f"VirtualMachine {ns}/app is not migrating" in proc.stderr, proc
    proc = plugin.run("release", FAST)
    assert proc.returncode == 2 and f"no remediation holds {FAST}" in proc.stderr, proc
    proc = plugin.run("--kubeconfig", "/nonexistent/kubeconfig", "top")
    assert proc.returncode == 2 and "cannot load the kubeconfig (/nonexistent/kubeconfig)" in proc.stderr, proc
    assert plugin.fleet.kube.get_json("vsmig", "-n", ns)["items"] == [], "a refused command created a migration"


def test_incompatible_target_fails_with_the_reason_and_why_explains_host_by_host(plugin: Plugin) -> None:
    ns = plugin.fleet.namespace()
    plugin.vm(ns, "db", FAST, compatibility=False, labels=_labels("db"))
    proc = plugin.run("migrate", "db", "--to", "h-zen3", "--wait", "-n", ns)
    assert proc.returncode == 1, proc
    assert f"Failed (IncompatibleProcessor): migration {ns}/db-" in proc.stdout, proc.stdout
    assert "h-zen3 is AMD (zen3)" in proc.stdout, proc.stdout
    assert "See which hosts could take it: kubectl vmshift why db" in proc.stdout
    assert plugin.fleet.status("vsvm", "db", ns)["host"] == FAST

    out = plugin.ok("why", "db", "-n", ns)
    assert out.startswith(f"{ns}/db runs on {FAST}."), out
    assert "Migratable=True (TargetsAvailable)" in out, out
    rows = {line.split()[0]: line for line in out.splitlines()[3:] if line.strip()}
    assert re.match(r"^h-zen3\s+no\s+IncompatibleProcessor\s", rows["h-zen3"]), rows["h-zen3"]
    assert re.match(r"^h-haswell\s+no\s+IncompatibleProcessor\s", rows["h-haswell"]), rows["h-haswell"]
    assert re.match(rf"^{SLOW}\s+yes\s+-", rows[SLOW]), rows[SLOW]
    assert re.match(r"^h-cordoned\s+no\s+TargetUnschedulable", rows["h-cordoned"]), rows["h-cordoned"]
    data = json.loads(plugin.ok("why", "db", "-n", ns, "-o", "json"))
    verdicts = {h["host"]: h for h in data["hosts"]}
    assert data["host"] == FAST and FAST not in verdicts
    assert verdicts[SLOW]["canTakeIt"] and not verdicts["h-zen3"]["canTakeIt"]
    assert verdicts["h-zen3"]["problems"][0]["reason"] == "IncompatibleProcessor"
    assert sorted(data["migratable"]["hosts"]) == sorted(h for h, v in verdicts.items() if v["canTakeIt"])


def _wait_transferring(plugin: Plugin, ns: str, vm: str) -> dict[str, Any]:
    def moving() -> dict[str, Any] | None:
        items = plugin.fleet.kube.get_json("vsmig", "-n", ns)["items"]
        for m in items:
            status = m.get("status") or {}
            if status.get("phase") == "Transferring" and (status.get("progress") or {}).get("transferredMiB"):
                return dict(m)
        return None
    return wait_for(moving, f"a migration of {vm} to be Transferring with bytes sent", 90)


def test_cancel_mid_transfer_leaves_the_vm_on_its_host(plugin: Plugin) -> None:
    ns = plugin.fleet.namespace()
    uid = plugin.vm(ns, "big", FAST, compatibility=True, memory=768, labels=_labels("big"), **QUIET)
    out = plugin.ok("migrate", "big", "--to", SLOW, "--no-wait", "-n", ns)
    assert "Follow it with: kubectl get vsmig" in out, out
    migration = _wait_transferring(plugin, ns, "big")
    proc = plugin.run("migrate", "big", "--to", SLOW, "-n", ns)
    assert proc.returncode == 2 and "big is already migrating" in proc.stderr, proc
    top = plugin.ok("top")
    assert re.search(rf"^{ns}\s+big\s+{migration['metadata']['name']}\s+Transferring\s+{FAST}\s+{SLOW}\s+\d+%",
                     top, re.M), top
    out = plugin.ok("cancel", "big", "-n", ns)
    assert out.splitlines() == [f"Cancelling migration {ns}/{migration['metadata']['name']} of big...",
                                f"Cancelled: big stays on {FAST}."], out
    assert plugin.fleet.get("vsmig", migration["metadata"]["name"], ns) == {}
    assert list(plugin.fleet.copies(uid)) == [FAST]
    proc = plugin.run("cancel", "big", "-n", ns)
    assert proc.returncode == 2 and "is not migrating" in proc.stderr, proc


def test_progress_bar_on_a_terminal_moves_shows_eta_and_ends_with_downtime(plugin: Plugin, tmp_path: Path) -> None:
    ns = plugin.fleet.namespace()
    plugin.vm(ns, "watched", FAST, compatibility=True, memory=768, labels=_labels("watched"), **QUIET)
    session = f"vmshift-{uuid.uuid4().hex[:8]}"
    command = " ".join(shlex.quote(a) for a in ["kubectl", "vmshift", "migrate", "watched", "--to", SLOW, "-n", ns])
    env = " ".join(f"{k}={shlex.quote(plugin.env[k])}" for k in ("KUBECONFIG", "PATH"))
    # No --wait: on a terminal it is the default. The shell stays after the command, showing its exit status.
    script = f"trap true INT; env TERM=xterm-256color {env} {command}; echo EXIT=$?; sleep 600"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "110", "-y", "30", script], check=True)
    screens: list[str] = []

    def screen() -> str:
        text = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True,
                              check=True).stdout
        screens.append(text)
        return text

    def percent(text: str) -> int | None:
        match = re.search(r"\s(\d{1,3})%\s+ETA (\d+(?:\.\d)? s|\d+m \d\ds)", text)
        return int(match.group(1)) if match and "Transferring" in text else None

    def last() -> str:
        return f"last screen:\n{screens[-1] if screens else ''}"

    try:
        first = wait_for(lambda: (p := percent(screen())) is not None and 0 < p < 90 and (p, screens[-1]),
                         "the bar to show a percentage under 90 with an ETA", 120, interval=0.3, describe=last)
        during = first[1]
        assert "watched" in during and f"{FAST} → {SLOW}" in during, during
        assert re.search(r"round \d+ · [\d.]+ MiB sent · [\d.]+ MiB left · dirty [\d.]+ MiB/s · link [\d.]+ Gbps",
                         during), during
        assert "━" in during, f"no bar drawn:\n{during}"
        later = wait_for(lambda: (p := percent(screen())) is not None and p > first[0] and p,
                         f"the percentage to move past {first[0]}%", 60, interval=0.3, describe=last)
        assert later > first[0]
        final = wait_for(lambda: "EXIT=" in (s := screen()) and s, "the command to end", 120, interval=0.5,
                         describe=last)
        assert "EXIT=0" in final, final
        assert f"Succeeded: watched now runs on {SLOW}" in final, final
        assert re.search(r"Downtime \d+\.\d ms; memory verified \(digests match\)\.", final), final
        assert re.search(r"100%\s+ETA", final), final
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
    (tmp_path / "screens.txt").write_text("\n----\n".join(screens))


def test_ctrl_c_on_a_terminal_asks_and_cancels(plugin: Plugin) -> None:
    ns = plugin.fleet.namespace()
    uid = plugin.vm(ns, "ctrlc", FAST, compatibility=True, memory=768, labels=_labels("ctrlc"), **QUIET)
    session = f"vmshift-{uuid.uuid4().hex[:8]}"
    env = " ".join(f"{k}={shlex.quote(plugin.env[k])}" for k in ("KUBECONFIG", "PATH"))
    # The shell traps SIGINT (so it lives on to print the exit status) without ignoring it, which the
    # plugin would inherit: Ctrl-C reaches the plugin as it reaches any command at a prompt.
    script = (f"trap true INT; env TERM=xterm-256color {env} kubectl vmshift migrate ctrlc --to {SLOW} -n {ns}; "
              f"echo EXIT=$?; sleep 600")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "110", "-y", "30", script], check=True)

    def screen() -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True,
                              check=True).stdout

    try:
        wait_for(lambda: re.search(r"\s[1-9]\d?%\s+ETA", screen()), "the transfer to show on screen", 120,
                 interval=0.3, describe=screen)
        subprocess.run(["tmux", "send-keys", "-t", session, "C-c"], check=True)
        wait_for(lambda: "or stop watching and leave it running" in screen(), "the question", 20, describe=screen)
        subprocess.run(["tmux", "send-keys", "-t", session, "c", "Enter"], check=True)
        final = wait_for(lambda: "EXIT=" in (s := screen()) and s, "the command to end", 90, describe=screen)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
    assert "EXIT=130" in final and f"Cancelled: ctrlc stays on {FAST}." in final, final
    assert list(plugin.fleet.copies(uid)) == [FAST]


def test_drain_dry_run_plans_and_changes_nothing_then_drain_blocks_and_completes(plugin: Plugin) -> None:
    ns = plugin.fleet.namespace()
    selector = {"hostSelector": {"matchLabels": {"pool": "cli-drain"}}}
    for name, compatibility in (("mover", True), ("stuck", False)):
        plugin.vm(ns, name, DRAIN_A, compatibility=compatibility, placement=dict(selector), labels=_labels(name))
    before = plugin.fleet.get("host", DRAIN_A)

    out = plugin.ok("drain", DRAIN_A, "--dry-run")
    assert out.splitlines()[0] == (f"Drain plan for {DRAIN_A} (dry run: nothing was changed): 1 to move, "
                                   f"1 blocked."), out
    assert re.search(rf"^1\s+{ns}/mover\s+0\s+{DRAIN_B}\s+Live\s+100%\s+\d+ Mbps", out, re.M), out
    assert re.search(r"Expected makespan [\d.]+ s; no schedule can beat [\d.]+ s \(lower bound", out), out
    # stuck's guest has icelake's features: the pool's other host (haswell) lacks them, and the rest of the
    # fleet is outside its selector; the planner names the commonest reason and lists the others.
    predicted = re.search(rf"^Blocked {ns}/stuck \((\w+)\): No host can take stuck for the drain of {DRAIN_A}",
                          out, re.M)
    assert predicted and f"lack the guest's processor vendor or features ({DRAIN_B}" in out, out
    plan = json.loads(plugin.ok("drain", DRAIN_A, "--dry-run", "-o", "json"))
    assert [m["vm"] for m in plan["moves"]] == [f"{ns}/mover"] and plan["moves"][0]["target"] == DRAIN_B
    assert plan["expectedMakespanSeconds"] >= plan["lowerBoundSeconds"] > 0, plan
    after = plugin.fleet.get("host", DRAIN_A)
    # (status moves with every heartbeat; what a person or the plugin writes is spec and metadata)
    assert after["spec"] == before["spec"] and after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["metadata"].get("annotations") == before["metadata"].get("annotations"), "a dry run changed the Host"
    assert plugin.fleet.kube.get_json("vsmig", "-n", ns)["items"] == []

    proc = plugin.run("drain", DRAIN_A, "--wait")
    assert proc.returncode == 1, proc
    assert f"Blocked {ns}/stuck ({predicted.group(1)}): No host can take stuck" in proc.stdout, proc.stdout
    assert f"The drain of {DRAIN_A} is Blocked" in proc.stdout
    assert re.search(rf"^{DRAIN_A}: \w+, drain Blocked: 1 of 2 moved", proc.stdout, re.M), proc.stdout
    assert plugin.fleet.status("vsvm", "mover", ns)["host"] == DRAIN_B
    assert plugin.fleet.status("vsvm", "stuck", ns)["host"] == DRAIN_A

    out = plugin.ok("undrain", DRAIN_A)
    assert out.strip() == f"{DRAIN_A}: maintenance off; the host is Ready.", out
    plugin.fleet.kube.kubectl("delete", "vsvm", "stuck", "-n", ns, "--wait=true")
    plugin.fleet.kube.kubectl("patch", "vsvm", "mover", "-n", ns, "--type=merge",
                              "-p", json.dumps({"spec": {"placement": {"host": DRAIN_A}}}))
    plugin.fleet.wait_phase("vsvm", "mover", ns, {"Running"})
    wait_for(lambda: plugin.fleet.status("vsvm", "mover", ns).get("host") == DRAIN_A, "mover back on the host", 90)
    plugin.fleet.unpin(ns, "mover")
    out = plugin.ok("drain", DRAIN_A, "--wait")
    assert out.splitlines()[-1] == (f"{DRAIN_A} is drained: no VM left to move; it stays in maintenance until "
                                    f"kubectl vmshift undrain {DRAIN_A}."), out
    assert plugin.fleet.status("host", DRAIN_A)["phase"] == "Maintenance"
    plugin.ok("undrain", DRAIN_A)


def test_cordon_uncordon_and_release_of_a_quarantined_host(plugin: Plugin) -> None:
    out = plugin.ok("cordon", DRAIN_B)
    assert out.strip() == f"{DRAIN_B}: cordoned: no new VM or inbound migration; VMs there keep running."
    assert plugin.fleet.get("host", DRAIN_B)["spec"]["unschedulable"] is True
    plugin.fleet.wait_phase("host", DRAIN_B, None, {"Cordoned"}, timeout=30)
    plugin.ok("uncordon", DRAIN_B)
    assert plugin.fleet.get("host", DRAIN_B)["spec"]["unschedulable"] is False
    plugin.fleet.wait_phase("host", DRAIN_B, None, {"Ready"}, timeout=30)

    plugin.fleet.apply({"apiVersion": "vmshift.io/v1alpha1", "kind": "RemediationPolicy",
                        "metadata": {"name": "cli-fan"},
                        "spec": {"match": {"alertname": "FanFailure"}, "action": "Quarantine", "debounceSeconds": 0,
                                 "cooldownSeconds": 0,
                                 "release": {"mode": "Annotation", "annotation": "example.com/fan-fixed"}}})
    async def sensors(change: SensorChange) -> None:
        async with plugin.fleet.stack.agents[DRAIN_B].client() as client:
            await client.set_sensors(change)

    asyncio.run(sensors(SensorChange(fan=ComponentFault(index=0, failed=True))))
    wait_for(lambda: plugin.fleet.status("host", DRAIN_B).get("remediation"), "the quarantine", 60)
    asyncio.run(sensors(SensorChange(heal=True)))
    out = plugin.ok("release", DRAIN_B, "--reason", "fan-replaced")
    assert out.splitlines()[0] == (f"{DRAIN_B}: set example.com/fan-fixed=fan-replaced; waiting for "
                                   f"RemediationPolicy cli-fan to release it..."), out
    assert out.splitlines()[1].startswith("Released (ReleasedByAnnotation): "), out
    assert not plugin.fleet.status("host", DRAIN_B).get("remediation")


def test_top_shows_hosts_and_structured_output(plugin: Plugin) -> None:
    out = plugin.ok("top")
    header = out.splitlines()[0].split()
    assert header[:4] == ["HOST", "PHASE", "CPU", "VMS"], out
    assert re.search(rf"^{SLOW}\s+Ready\s+icelake\s+\d+\s+\d+/32\s+", out, re.M), out
    assert re.search(r"^h-cordoned\s+Cordoned\s+icelake", out, re.M), out
    data = yaml.safe_load(plugin.ok("status", "-o", "yaml"))
    names = [h["HOST"] for h in data["hosts"]]
    assert SLOW in names and "h-zen3" in names and isinstance(data["moving"], list), data


def test_import_an_ovf_follows_its_steps_and_bad_files_are_refused(plugin: Plugin, tmp_path: Path) -> None:
    ns = plugin.fleet.namespace()
    ovf = shared_dir() / "testdata" / "ovf" / "vmware.ovf"
    out = plugin.ok("import", str(ovf), "--name", "imported", "--volume", "csv-1", "--compatibility", "--wait",
                    "-n", ns, timeout=300)
    assert f"ConfigMap {ns}/imported-source holds vmware.ovf" in out, out
    assert f"VirtualMachineImport {ns}/imported created: OVF vmware.ovf -> VirtualMachine {ns}/imported" in out
    for step in ("Inspect", "InstallAgent", "RemoveThirdPartyDrivers", "InstallSyntheticDrivers",
                 "CreateVirtualMachine", "Verify"):
        assert re.search(rf"^  {step}\s+Succeeded ", out, re.M), f"{step} not shown Succeeded:\n{out}"
    assert re.search(rf"^Imported: VirtualMachine {ns}/imported runs on \S+\.$", out, re.M), out
    assert plugin.fleet.status("vsvm", "imported", ns)["phase"] == "Running"

    inventory = tmp_path / "fs01.yaml"
    inventory.write_text(yaml.safe_dump({"physical": {
        "hostname": "fs01.corp.example.com", "cpus": {"cores": 2}, "memoryMiB": 1024, "os": "Windows Server 2016",
        "disks": [{"name": "system", "sizeGiB": 40, "bus": "SAS"}, {"name": "usb-stick", "sizeGiB": 8, "bus": "USB"}],
        "nics": [{"name": "nic1", "macAddress": "3c:a8:2a:10:4f:01", "speedMbps": 1000, "driver": "bnx2x"}],
        "drivers": ["hpsa", "bnx2x"]}}))
    proc = plugin.run("import", str(inventory), "--compatibility", "--wait", "-n", ns, timeout=300)
    assert proc.returncode == 0, proc
    assert f"VirtualMachineImport {ns}/fs01 created: physical inventory fs01.yaml -> VirtualMachine {ns}/fs01" \
        in proc.stdout, proc.stdout
    assert "ConfigMap" not in proc.stdout, "an inventory goes inline, not in a ConfigMap"
    assert re.search(r"^  RemoveThirdPartyDrivers\s+Succeeded .*hpsa", proc.stdout, re.M), proc.stdout
    assert re.search(r"^warning: .*USB disk usb-stick", proc.stderr, re.M), proc.stderr
    assert plugin.fleet.status("vsvm", "fs01", ns)["phase"] == "Running"

    proc = plugin.run("import", str(ovf), "--name", "imported", "-n", ns)
    assert proc.returncode == 2 and f"VirtualMachineImport {ns}/imported exists already" in proc.stderr, proc
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    proc = plugin.run("import", str(notes), "-n", ns)
    assert proc.returncode == 2 and "cannot tell what to import from .txt" in proc.stderr, proc
    bad = tmp_path / "server.yaml"
    bad.write_text(yaml.safe_dump({"hostname": "srv", "cpus": {"cores": 0}, "memoryMiB": 1024, "disks": [],
                                         "nics": [], "os": "Linux"}))
    proc = plugin.run("import", str(bad), "-n", ns)
    assert proc.returncode == 2 and "server.yaml is not a valid physical inventory: cpus.cores:" in proc.stderr, proc
    proc = plugin.run("import", str(tmp_path / "missing.ova"), "-n", ns)
    assert proc.returncode == 2 and "cannot read" in proc.stderr and "missing.ova" in proc.stderr, proc


def test_completion_through_kubectl_and_the_script(plugin: Plugin) -> None:
    ns = plugin.fleet.namespace()
    plugin.vm(ns, "complete-me", FAST, compatibility=True, labels=_labels("complete-me"))
    env = plugin.env
    direct = subprocess.run(["kubectl_complete-vmshift", "-n", ns, "migrate", "comp"], capture_output=True,
                            text=True, env=env, check=True).stdout
    assert direct.splitlines() == ["complete-me", ":4"], direct
    hosts = subprocess.run(["kubectl_complete-vmshift", "drain", "cli-"], capture_output=True, text=True, env=env,
                           check=True).stdout.splitlines()
    assert hosts == [*sorted([DRAIN_A, DRAIN_B, FAST, SLOW]), ":4"], hosts
    via_kubectl = subprocess.run(["kubectl", "__complete", "vmshift", "-n", ns, "migrate", "complete-me", "--to",
                                  "cli-s"], capture_output=True, text=True, env=env, check=True).stdout
    assert via_kubectl.splitlines()[0] == SLOW, via_kubectl
    commands = subprocess.run(["kubectl", "__complete", "vmshift", "dr"], capture_output=True, text=True, env=env,
                              check=True).stdout
    assert commands.splitlines()[0] == "drain", commands
    script = plugin.ok("completion", "bash")
    assert "complete -F _kubectl_vmshift kubectl-vmshift" in script
    bash = subprocess.run(["bash", "-c", script + '\nCOMP_WORDS=(kubectl-vmshift cor); COMP_CWORD=1; '
                                                  '_kubectl_vmshift; echo "${COMPREPLY[@]}"'],
                          capture_output=True, text=True, env=env, check=True).stdout
    assert bash.split() == ["cordon"], bash

"""The development node's pieces that need no root: the runc wrapper, the image archive, the PKI pairs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vmshift.devcluster import runcwrap
from vmshift.devcluster.imagetar import write_image_tar
from vmshift.devcluster.node import missing_host_tools
from vmshift.devcluster.pki import ensure_pki, issue_pair


def _spec(score: int | None = -998) -> dict[str, object]:
    caps = ["CAP_CHOWN", "CAP_SYS_RESOURCE", "CAP_NET_ADMIN"]
    process: dict[str, object] = {"args": ["/pause"], "capabilities": {s: list(caps) for s in runcwrap.CAPABILITY_SETS}}
    if score is not None:
        process["oomScoreAdj"] = score
    return {"ociVersion": "1.0.2", "process": process}


def test_wrapper_finds_the_bundle_of_create_after_global_options() -> None:
    argv = ["--root", "/run/r", "--log", "/x/log.json", "--log-format", "json", "create", "--bundle", "/b/1",
            "--pid-file", "/b/1/pid", "c1"]
    assert runcwrap.spec_file(argv) == ("create", Path("/b/1/config.json"))
    assert runcwrap.spec_file(["run", "--bundle=/b/2", "c2"]) == ("run", Path("/b/2/config.json"))
    assert runcwrap.spec_file(["create", "c3"]) == ("create", Path("config.json"))


def test_wrapper_finds_the_process_file_of_exec_and_ignores_other_commands() -> None:
    assert runcwrap.spec_file(["--root", "/r", "exec", "--process", "/tmp/p.json", "--detach", "c1"]) == (
        "exec", Path("/tmp/p.json"))
    assert runcwrap.spec_file(["--root", "/r", "exec", "c1", "ls"]) is None
    for argv in (["--root", "/r", "start", "c1"], ["kill", "c1", "9"], ["delete", "--force", "c1"], ["--version"]):
        assert runcwrap.spec_file(argv) is None


def test_wrapper_drops_the_capability_and_raises_negative_oom_scores(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(_spec(-998)))
    runcwrap.rewrite("create", tmp_path / "config.json")
    process = json.loads((tmp_path / "config.json").read_text())["process"]
    assert process["oomScoreAdj"] == 0
    for name in runcwrap.CAPABILITY_SETS:
        assert process["capabilities"][name] == ["CAP_CHOWN", "CAP_NET_ADMIN"]


def test_wrapper_keeps_positive_scores_and_leaves_clean_specs_untouched(tmp_path: Path) -> None:
    spec = _spec(1000)
    assert runcwrap.soften_spec(spec) is True  # the capability went
    assert spec["process"]["oomScoreAdj"] == 1000  # type: ignore[index]
    assert runcwrap.soften_spec(spec) is False
    path = tmp_path / "p.json"
    path.write_text(json.dumps(spec["process"]))
    before = path.stat().st_mtime_ns
    runcwrap.rewrite("exec", path)
    assert path.stat().st_mtime_ns == before


def test_wrapper_execs_the_real_runc_with_the_same_arguments(tmp_path: Path) -> None:
    fake = tmp_path / "runc"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    fake.chmod(0o755)
    (tmp_path / "config.json").write_text(json.dumps(_spec(-997)))
    argv = ["--root", "/r", "create", "--bundle", str(tmp_path), "c1"]
    out = subprocess.run([sys.executable, "-I", "-S", runcwrap.__file__, *argv], capture_output=True, text=True,
                         env={**os.environ, "VMSHIFT_REAL_RUNC": str(fake)}, check=True).stdout
    assert json.loads(out) == argv
    assert json.loads((tmp_path / "config.json").read_text())["process"]["oomScoreAdj"] == 0


def test_image_archive_has_the_layout_docker_save_writes(tmp_path: Path) -> None:
    path = tmp_path / "img.tar"
    write_image_tar(path, "vmshift.local/pause:1", {"pause": b"\x7fELF-not-really"}, entrypoint=["/pause"])
    with tarfile.open(path) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert manifest[0]["RepoTags"] == ["vmshift.local/pause:1"]
        config = json.loads(tar.extractfile(manifest[0]["Config"]).read())  # type: ignore[union-attr]
        assert config["config"]["Entrypoint"] == ["/pause"]
        layer = tar.extractfile(manifest[0]["Layers"][0])
        assert layer is not None
        with tarfile.open(fileobj=layer) as inner:
            member = inner.getmember("pause")
            assert member.mode == 0o755 and member.size == len(b"\x7fELF-not-really")


def test_node_certificates_name_the_node(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki")
    cert_path, key_path = issue_pair(pki, "kubelet", "system:node:n1", "system:nodes", server_ips=("10.244.0.1",))
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:n1"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:nodes"
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.244.0.1"]
    assert key_path.stat().st_mode & 0o077 == 0


def test_serving_certificate_is_reissued_when_an_address_is_missing(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki")
    ca_before = pki.ca_cert.read_bytes()
    ensure_pki(tmp_path / "pki", extra_ips=("10.244.0.1",))
    cert = x509.load_pem_x509_certificate(pki.serving_cert.read_bytes())
    ips = [str(ip) for ip in cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)]
    assert "10.244.0.1" in ips and "127.0.0.1" in ips
    assert pki.ca_cert.read_bytes() == ca_before


def test_missing_host_tools_name_their_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    missing = missing_host_tools()
    assert "containerd (apt-get install containerd)" in missing
    assert "iptables (apt-get install iptables)" in missing

"""A real Prometheus Alertmanager process for the end-to-end tests: configured to notify the operator's webhook.

Built once from the Go module proxy (``vmshift.devcluster.alertmanager``); each test run starts its
own process on free loopback ports with its own storage directory, and stops it at the end.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.kube import wait_for
from vmshift.devcluster import alertmanager


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class Alertmanager:
    """One Alertmanager that routes every alert, in one group, to ``webhook_url`` with a bearer token
    read from a file (``http_config.authorization.credentials_file``), resolved alerts included."""

    def __init__(self, workdir: Path, webhook_url: str, token: str) -> None:
        self.binary = alertmanager.ensure()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        token_file = self.dir / "webhook-token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(token)
        config = {
            # no group_by: every alert joins one group, so one notification carries all of them
            "route": {"receiver": "vmshift", "group_wait": "1s", "group_interval": "2s", "repeat_interval": "1h"},
            "receivers": [{"name": "vmshift", "webhook_configs": [{
                "url": webhook_url, "send_resolved": True, "max_alerts": 0,
                "http_config": {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}},
            }]}],
        }
        # JSON is YAML: Alertmanager reads this file as its configuration
        (self.dir / "alertmanager.yml").write_text(json.dumps(config, indent=2))
        self.log_path = self.dir / "alertmanager.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(self.binary), f"--config.file={self.dir / 'alertmanager.yml'}",
             f"--storage.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--cluster.listen-address=", "--log.level=debug"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for(self._ready, "Alertmanager to answer /-/ready", 60, interval=0.3, describe=self.log_tail)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"Alertmanager exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def post_alerts(self, labels: Iterable[dict[str, str]], *, resolved: bool = False,
                    annotations: dict[str, str] | None = None) -> None:
        """POST alerts to ``/api/v2/alerts``, as Prometheus does; resolved ones carry ``endsAt`` = now."""
        now = _now()
        body = [{"labels": lab, "annotations": {"summary": f"{lab.get('alertname')} on {lab.get('host')}",
                                                **(annotations or {})},
                 "startsAt": now, "generatorURL": "http://prometheus.example/graph",
                 **({"endsAt": now} if resolved else {})} for lab in labels]
        request = urllib.request.Request(f"{self.url}/api/v2/alerts", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200, response.read()

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels`` (0 when there is none)."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            text = response.read().decode()
        total = 0.0
        for line in text.splitlines():
            match = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
            if not match:
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(match.group(2))
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()

    def __enter__(self) -> Alertmanager:
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()

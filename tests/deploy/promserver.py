"""A real Prometheus for the deploy tests: the shipped scrape config pointed at an agent,
the shipped (or slightly adapted) rules, and its HTTP API."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO, free_port, wait_until

PROM_DIR = REPO / "deploy" / "prometheus"
RULES = PROM_DIR / "rules" / "egress-agent.rules.yml"


class Prometheus:
    """`prometheus` on loopback with the shipped scrape config pointed at `target`."""

    def __init__(
        self,
        workdir: Path,
        target: str,
        rules: Path,
        job_extra: dict[str, Any] | None = None,
        netns: Any = None,
    ) -> None:
        # netns: a Rig and a namespace name, to run Prometheus (and talk to it) in there
        self.netns = netns
        doc = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
        doc["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
        doc["rule_files"] = [str(rules)]
        (job,) = [j for j in doc["scrape_configs"] if j["job_name"] == "egress-agent"]
        job.update(scrape_interval="1s", scrape_timeout="1s")
        # no host label: the shipped relabelling derives it from the address
        job["static_configs"] = [{"targets": [target]}]
        job.update(job_extra or {})
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(doc))
        port = free_port() if netns is None else _free_port_in(netns[0], netns[1])
        self.url = f"http://127.0.0.1:{port}"
        self.log = workdir / "prometheus.log"
        self._log = self.log.open("wb")
        argv = [
            "prometheus",
            f"--config.file={self.config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address={self.url.removeprefix('http://')}",
            "--log.level=warn",
        ]
        if netns is None:
            self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        else:
            rig, ns = netns
            self.proc = rig.exec(ns, *argv, stdout=self._log, stderr=subprocess.STDOUT)
        wait_until(self._ready, "prometheus ready", 60, why=self.tail)

    def _net(self) -> contextlib.AbstractContextManager[None]:
        if self.netns is None:
            return contextlib.nullcontext()
        rig, ns = self.netns
        return rig.inside(ns)  # type: ignore[no-any-return]

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.tail()
        try:
            with self._net(), urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with self._net(), urllib.request.urlopen(url, timeout=5) as r:
            doc = json.loads(r.read())
        assert doc["status"] == "success", doc
        return doc["data"]

    def alerts(self, name: str, state: str = "firing") -> list[dict[str, Any]]:
        return [
            a
            for a in self.api("alerts")["alerts"]
            if a["labels"]["alertname"] == name and a["state"] == state
        ]

    def tail(self) -> str:
        self._log.flush()
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def rules_with_short_for(tmp_path: Path) -> Path:
    """The shipped rules with every `for:` cut to 1s; nothing else changes."""
    text, n = re.subn(r"(?m)^(\s+for:\s*)\S+$", r"\g<1>1s", RULES.read_text())
    assert n >= 5
    path = tmp_path / "egress-agent.rules.yml"
    path.write_text(text)
    return path


def _free_port_in(rig: Any, ns: str) -> int:
    with rig.inside(ns), socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

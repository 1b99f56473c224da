"""End to end: a real `git push` over HTTPS to a server presenting SNI `github.com`.

The peer namespace runs `git http-backend` behind a small TLS front (Python's
http.server calling the CGI). The client resolves github.com to the peer with
`http.curloptResolve`, so the TLS ClientHello carries SNI github.com; the connection
belongs to `git-remote-https`, whose cwd is the repository. The agent must open exactly
one `repository_push` incident naming the repository, its commit and github.com (the
GET of the refs advertisement is a small flow that receives more than it sends: not a
push).
"""

from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.classify.test_repository import GIT_ENV, git
from tests.conftest import is_root
from tests.e2e.gitpush import agent_up, push, the_push_incident, weighty_repo
from tests.sensors.network.peers import self_signed
from tests.sensors.network.rig import Rig, free_port_in

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def backend_handler(root: Path) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        """`git http-backend` as CGI: the smart HTTP protocol, push included."""

        def _cgi(self) -> None:
            path, _, query_string = self.path.partition("?")
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            env = {
                **GIT_ENV,
                "GIT_PROJECT_ROOT": str(root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "REQUEST_METHOD": self.command,
                "PATH_INFO": path,
                "QUERY_STRING": query_string,
                "CONTENT_TYPE": self.headers.get("Content-Type") or "",
                "CONTENT_LENGTH": str(length),
                "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding") or "",
                "GIT_PROTOCOL": self.headers.get("Git-Protocol") or "",
                "REMOTE_USER": "alice",
                "REMOTE_ADDR": self.client_address[0],
            }
            out = subprocess.run(
                ["git", "http-backend"], input=body, env=env, capture_output=True, timeout=60
            ).stdout
            head, _, payload = out.partition(b"\r\n\r\n")
            status = 200
            headers = []
            for line in head.decode("latin-1").split("\r\n"):
                key, _, value = line.partition(":")
                if key.lower() == "status":
                    status = int(value.strip().split()[0])
                elif key:
                    headers.append((key, value.strip()))
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = _cgi
        do_POST = _cgi

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.mark.skipif(not is_root(), reason="needs root: namespaces, sock_diag")
def test_https_push_to_github_is_one_incident(rig: Rig, tmp_path: Path, sender_agent: Any) -> None:
    repo, head = weighty_repo(tmp_path / "work")
    srv = tmp_path / "srv"
    (srv / "alice").mkdir(parents=True)
    git(srv / "alice", "init", "-q", "--bare", "motor-ctl.git")
    git(srv / "alice" / "motor-ctl.git", "config", "http.receivepack", "true")
    port = free_port_in(rig, rig.peer_ns)
    tls = self_signed(tmp_path, cn="github.com")
    servers: list[ThreadingHTTPServer] = []
    ready = threading.Event()

    def serve() -> None:
        httpd = ThreadingHTTPServer((rig.peer_v4, port), backend_handler(srv))
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
        servers.append(httpd)
        ready.set()
        httpd.serve_forever(poll_interval=0.2)

    rig.run_in(rig.peer_ns, serve)
    assert ready.wait(10)
    try:
        agent, db = agent_up(sender_agent, "lab-ws-https", "git.corp.example")
        url = f"https://github.com:{port}/alice/motor-ctl.git"
        push(
            rig,
            repo,
            url,
            "http.sslVerify=false",
            f"http.curloptResolve=github.com:{port}:{rig.peer_v4}",
            env={"GIT_TERMINAL_PROMPT": "0", "HOME": str(tmp_path)},
        )
        assert git(srv / "alice" / "motor-ctl.git", "rev-parse", "main") == head

        rule_id, severity, title, evidence = the_push_incident(agent, db)
        assert rule_id == "rd-assets-repository-push" and severity == "high"
        assert title.startswith(f"repository motor-ctl ({url}, commit {head[:12]}"), title
        assert "pushed to github.com (US, foreign) by git-remote-http" in title, title
        ev = json.loads(evidence)
        (flow,) = ev["flows"]
        assert flow["sni"] == "github.com" and flow["bytes_out"] > 100_000
        assert ev["repository"]["root"] == str(repo) and ev["repository"]["commit"] == head
    finally:
        for s in servers:
            s.shutdown()

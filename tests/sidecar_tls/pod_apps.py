"""Tiny apps and clients the end-to-end tests run inside pods (stdlib only, no mesh code).

python -m tests.sidecar_tls.pod_apps http-server PORT      # JSON of request, headers, peer
python -m tests.sidecar_tls.pod_apps line-server PORT      # "echo <peer ip>: <line>"
python -m tests.sidecar_tls.pod_apps http-get URL [HEADER=VALUE ...]
python -m tests.sidecar_tls.pod_apps http-loop URL SECONDS # counts ok/failed, one JSON line
python -m tests.sidecar_tls.pod_apps lines HOST PORT LINE...
python -m tests.sidecar_tls.pod_apps tls-get HOST PORT CERT KEY CA   # mTLS with given files
python -m tests.sidecar_tls.pod_apps plain-get HOST PORT
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import StreamRequestHandler, ThreadingTCPServer


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        body = json.dumps(
            {"path": self.path, "headers": headers, "peer": self.client_address[0]}
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


class _Lines(StreamRequestHandler):
    def handle(self) -> None:
        while line := self.rfile.readline():
            self.wfile.write(f"echo {self.client_address[0]}: ".encode() + line)
            self.wfile.flush()


def _serve(kind: str, port: int) -> None:
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingTCPServer.allow_reuse_address = True
    ThreadingTCPServer.daemon_threads = True
    ThreadingHTTPServer.daemon_threads = True
    server = (
        ThreadingHTTPServer(("0.0.0.0", port), _Echo)
        if kind == "http-server"
        else ThreadingTCPServer(("0.0.0.0", port), _Lines)
    )
    server.serve_forever()


def _get(url: str, headers: dict[str, str]) -> tuple[int, str]:
    if not url.startswith("http://"):
        raise SystemExit(f"only http:// URLs: {url}")
    req = urllib.request.Request(url, headers=headers)  # noqa: S310 - scheme checked above
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def main(argv: list[str]) -> None:
    cmd = argv[0]
    if cmd in ("http-server", "line-server"):
        _serve(cmd, int(argv[1]))
    elif cmd == "http-get":
        hdrs = dict(a.split("=", 1) for a in argv[2:])
        status, body = _get(argv[1], hdrs)
        print(json.dumps({"status": status, "body": body}))
    elif cmd == "http-loop":
        deadline = time.monotonic() + float(argv[2])
        ok = failed = 0
        errors: list[str] = []
        while time.monotonic() < deadline:
            try:
                status, _ = _get(argv[1], {})
                ok += status == 200
                if status != 200:
                    failed += 1
                    errors.append(str(status))
            except OSError as exc:
                failed += 1
                errors.append(str(exc))
            time.sleep(0.02)
        print(json.dumps({"ok": ok, "failed": failed, "errors": errors[:5]}))
    elif cmd == "lines":
        with socket.create_connection((argv[1], int(argv[2])), timeout=10) as s:
            f = s.makefile("rwb")
            out = []
            for line in argv[3:]:
                f.write(line.encode() + b"\n")
                f.flush()
                out.append(f.readline().decode().rstrip("\n"))
        print(json.dumps(out))
    elif cmd == "tls-get":
        host, port, cert, key, ca = argv[1], int(argv[2]), argv[3], argv[4], argv[5]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(ca)
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(["http/1.1"])
        try:
            with (
                socket.create_connection((host, port), timeout=10) as raw,
                ctx.wrap_socket(raw) as s,
            ):
                s.sendall(f"GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n".encode())
                data = s.recv(65536)
            print(json.dumps({"result": data.split(b"\r\n", 1)[0].decode() or "closed"}))
        except (OSError, ssl.SSLError) as exc:
            print(json.dumps({"result": f"refused: {exc}"}))
    elif cmd == "plain-get":
        try:
            with socket.create_connection((argv[1], int(argv[2])), timeout=10) as s:
                s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                data = s.recv(65536)
            print(json.dumps({"result": data.split(b"\r\n", 1)[0].decode() or "closed"}))
        except OSError as exc:
            print(json.dumps({"result": f"refused: {exc}"}))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
